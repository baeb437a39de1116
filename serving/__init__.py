"""The Ray Serve application — not written yet: issue #5 adds it."""
