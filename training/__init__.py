"""Ray Train job entry points (two-tower, DLRM, HPO sweep) — not written yet: issue #3 adds them."""
