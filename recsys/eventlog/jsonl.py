"""Reading append-only JSON-lines logs that a process may have been killed while writing.

A replica killed in the middle of an append leaves a torn line: the rest of the file is fine, but one line is not
JSON (or has no newline yet). Polars' own NDJSON reader fails the whole file on it. Here every complete, parseable
line becomes a row (with its 1-based line number in ``LINE``) and every other line a `BadLine` naming its file and
line, so a caller can quarantine it and keep the rest. A field whose lines disagree on its JSON type (a number in
one line, an array or a string in another) is kept as each value's JSON text rather than nulled.

`read_jsonl` reads whole files (batch ingest). `JsonlTail` follows a folder of logs and returns, per poll, only
the lines completed since the last one: a monitor polling every few seconds reads each byte once, not the whole
log every time. A last line without its newline is left for the next poll (its writer may still be writing).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

LINE = "__line"  # the 1-based line number of a row in its file
MAX_TEXT = 500  # characters of a bad line kept for the report


@dataclass(frozen=True)
class BadLine:
    file: str
    line: int  # 1-based
    text: str  # the line as found (cut at MAX_TEXT characters unless the reader asked for all of it)
    reason: str

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "text": self.text, "reason": self.reason}


_KINDS = {bool: "boolean", int: "number", float: "number", str: "string", dict: "object", list: "array"}


def _column(name: str, values: list) -> pl.Series:
    """One field of many JSON objects as a Series. Where the lines disagree on the field's JSON type (a number
    here, a string or an array there), every value becomes its JSON text instead: nothing is nulled or coerced,
    and a reader that parses the text row by row can tell the bad value from the good ones."""
    if len({_KINDS.get(type(v)) for v in values if v is not None}) <= 1:
        try:
            return pl.Series(name, values, strict=False)
        except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
            pass  # e.g. an integer beyond int128, or nested values of different types
    return pl.Series(name, [v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pl.String)


def _rows(lines: list[tuple[int, bytes]]) -> pl.DataFrame:
    """Lines known to be JSON objects -> a frame with their line numbers."""
    numbers = pl.Series(LINE, [n for n, _ in lines], dtype=pl.Int64)
    if not lines:
        return pl.DataFrame([numbers])
    data = b"\n".join(text for _, text in lines)
    try:
        frame = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
        if frame.height != len(lines):
            raise ValueError("not one row per line")
    except (pl.exceptions.PolarsError, ValueError):  # e.g. values of different types in one field
        objects = [json.loads(text) for _, text in lines]
        names = dict.fromkeys(name for obj in objects for name in obj)
        frame = pl.DataFrame([_column(name, [obj.get(name) for obj in objects]) for name in names])
    return frame.with_columns(numbers)


def parse_jsonl(data: bytes, file: str, first_line: int = 1, final: bool = True,
                max_text: int | None = MAX_TEXT) -> tuple[pl.DataFrame, list[BadLine], int]:
    """Rows and bad lines of ``data`` (the bytes of ``file`` from line ``first_line`` on).

    Args:
        final: the data is the whole rest of the file, so a last line without a newline is read too (a bad line if
            it does not parse: its writer was interrupted). Otherwise that line is left for when it is finished.
        max_text: characters of a bad line's text kept in `BadLine.text`; None keeps the whole line.
    Returns:
        (rows with a ``LINE`` column, bad lines, how many bytes of ``data`` were consumed).
    """
    end = len(data) if final else data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")
    numbered = [(first_line + i, text) for i, text in enumerate(lines) if text.strip()]
    last = first_line + len(lines) - 1 if final and not data.endswith(b"\n") else None  # a line without newline
    bad: list[BadLine] = []
    if not numbered:
        return _rows([]), bad, end
    try:  # the common case: every line is fine, one Polars call
        frame = pl.read_ndjson(io.BytesIO(b"\n".join(t for _, t in numbered)), infer_schema_length=None)
        if frame.height != len(numbered) or not all(t.lstrip()[:1] == b"{" for _, t in numbered):
            raise ValueError("not one object per line")
        frame = frame.with_columns(pl.Series(LINE, [n for n, _ in numbered], dtype=pl.Int64))
    except (pl.exceptions.PolarsError, ValueError):
        good = []
        for n, text in numbered:
            try:
                value = json.loads(text)
            except ValueError as exc:
                torn = " (the file's last line, without a newline: its writer was interrupted)" if n == last else ""
                bad.append(BadLine(file, n, text.decode(errors="replace")[:max_text], f"not JSON{torn}: {exc}"))
                continue
            if isinstance(value, dict):
                good.append((n, text))
            else:
                bad.append(BadLine(file, n, text.decode(errors="replace")[:max_text],
                                   f"not a JSON object (a {type(value).__name__})"))
        frame = _rows(good)
    return frame, sorted(bad, key=lambda b: b.line), end


def read_jsonl(path: str | Path, max_text: int | None = MAX_TEXT) -> tuple[pl.DataFrame, list[BadLine]]:
    """Every line of one file that is a JSON object as a row (``LINE``: its line number), and the lines that are
    not, with ``max_text`` characters of their text (None: all). A last line without a newline is read too."""
    path = Path(path)
    frame, bad, _ = parse_jsonl(path.read_bytes(), str(path), max_text=max_text)
    return frame, bad


@dataclass
class _Position:
    offset: int = 0  # bytes consumed
    lines: int = 0  # lines consumed


@dataclass
class JsonlTail:
    """Follows ``<root>/<pattern>`` (append-only files, new ones appearing): `poll` returns the rows of the lines
    completed since the previous poll, each file read from where the last poll stopped."""

    root: Path
    pattern: str
    _at: dict[str, _Position] = field(default_factory=dict)

    def poll(self) -> tuple[pl.DataFrame | None, list[BadLine]]:
        frames, bad = [], []
        for path in sorted(self.root.glob(self.pattern)):
            pos = self._at.setdefault(str(path), _Position())
            try:
                size = path.stat().st_size
                if size <= pos.offset:
                    continue
                with open(path, "rb") as f:
                    f.seek(pos.offset)
                    data = f.read(size - pos.offset)
            except FileNotFoundError:
                continue
            frame, torn, used = parse_jsonl(data, str(path), pos.lines + 1, final=False)
            pos.offset += used
            pos.lines += data[:used].count(b"\n")
            bad += torn
            if frame.height:
                frames.append(frame)
        return (pl.concat(frames, how="diagonal_relaxed") if frames else None), bad
