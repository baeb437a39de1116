"""Plain-text views of registered versions and alias events (what ``recsys models`` prints)."""

from __future__ import annotations

import contextlib
import json

from recsys.registry.aliases import AliasEvent
from recsys.registry.lineage import JSON_KEYS, LINEAGE_KEYS
from recsys.registry.versions import ModelVersion


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns aligned, a rule under the header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _ordered_keys(tags: dict[str, str]) -> list[str]:
    rest = sorted(k for k in tags if k not in LINEAGE_KEYS)
    return [k for k in LINEAGE_KEYS if k in tags] + rest


def _flat(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, dict | list) \
        else str(value)


def show(v: ModelVersion) -> str:
    """Every tag of a version; JSON values one entry a line."""
    head = [f"{v.task} version {v.version}  created {v.created}  aliases: {', '.join(v.aliases) or '-'}",
            f"source: {v.source}"]
    nested = {k: _flatten(json.loads(v.tags[k])) for k in JSON_KEYS if v.tags.get(k)}
    width = max([len(k) for k in v.tags] + [4 + len(k) for entries in nested.values() for k in entries])
    lines = []
    for key in _ordered_keys(v.tags):
        if key in nested:
            lines.append(f"{key}:")
            lines += [f"    {k:<{width - 4}}  {_flat(x)}" for k, x in nested[key].items()] or ["    (none)"]
        else:
            lines.append(f"{key:<{width}}  {v.tags[key]}")
    return "\n".join(head + lines)


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _rows(v: ModelVersion) -> dict[str, str]:
    """A version as flat rows: plain tags, then JSON tags one key a row (``metrics.test/auc`` …)."""
    rows: dict[str, str] = {"created": v.created, "aliases": ",".join(v.aliases) or "-"}
    for key in _ordered_keys(v.tags):
        if key in JSON_KEYS and v.tags[key]:
            tree = json.loads(v.tags[key])
            rows |= {f"{key}.{k}": _flat(x) for k, x in _flatten(tree).items()}
        else:
            rows[key] = v.tags[key]
    return rows


def diff(a: ModelVersion, b: ModelVersion) -> str:
    """Two versions side by side; ``*`` marks rows that differ; numeric metric rows get V2 - V1."""
    ra, rb = _rows(a), _rows(b)
    keys = list(dict.fromkeys([*ra, *rb]))
    rows = []
    for key in keys:
        x, y = ra.get(key, "-"), rb.get(key, "-")
        delta = ""
        if key.startswith(("metrics.", "baselines.", "parity.")) and x != y:
            with contextlib.suppress(ValueError):  # not numbers (e.g. "-" where one version lacks the key)
                delta = f"{float(y) - float(x):+.4g}"
        rows.append(["*" if x != y else "", key, x, y, delta])
    return table(["", "", f"v{a.version}", f"v{b.version}", "v2 - v1"], rows)


def _v(version: int | None) -> str:
    return "(none)" if version is None else f"v{version}"


def event_line(e: AliasEvent) -> str:
    moved = f"{_v(e.from_version)} -> {_v(e.to_version)}"
    why = f": {e.reason}" if e.reason else ""
    return f"{e.when}  {e.task} {e.alias} {moved}  ({e.action} by {e.who}){why}"


def history(events: list[AliasEvent]) -> str:
    """Alias moves, oldest first, with the metric comparison and any override."""
    rows = []
    for e in events:
        compared = (e.comparison or {}).get("detail", "")
        notes = "; ".join(x for x in (compared, f"FORCED: {e.forced}" if e.forced else "") if x)
        rows.append([e.when, e.alias, e.action,
                     "-" if e.from_version is None else _v(e.from_version), _v(e.to_version), e.who,
                     e.reason or "-", notes or "-"])
    return table(["when (UTC)", "alias", "action", "from", "to", "who", "reason", "gate"], rows)
