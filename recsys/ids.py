"""Shop ids of any type: integers kept as they are, text ids (SKUs, UUIDs) as stable 63-bit codes.

Inside the pipeline, the models and the online tables every id is an Int64. A shop whose ``user_id`` (or
``item_id``, ``event_id``, ``session_id``, ``request_id``) is an integer keeps it unchanged. A shop whose id is
text gets each id's *code*: the first 8 bytes of its BLAKE2b digest with the sign bit cleared, the same on every
machine and in every process, so serving encodes a request's ``"SKU-0042"`` exactly as the build did without a
table. Going back (an answer's item ids, the feedback log) needs the map the build keeps: `IdMap`.

Which kind a column is: ``integer`` when at least half its values, over every table that has it, are plain
decimal integers ("0", "17", "-3"; not "007", which a shop means as text, nor "1.0") — the others are then
quarantined as unparseable, so a few garbled values do not turn a shop's numbers into text — else ``text``; or as
configured (``ingest.ids``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys.errors import RecsysError

ID_COLUMNS = ("event_id", "user_id", "item_id", "session_id", "request_id")
MAPPED_IDS = ("user_id", "item_id")  # the ids an API takes and returns: their maps are kept
KINDS = ("integer", "text")
INTEGER_TEXT = r"^(0|-?[1-9][0-9]{0,18})$"  # a decimal int64 as a shop writes one (no leading zeros, no sign +)
CODE, SHOP_ID = "code", "id"
EXPORT_ID_MAPS = "ids"  # an export's folder of maps (`recsys.export.exporter`); its export.json has the kinds


class IdError(RecsysError, ValueError):
    """Ids that cannot be coded (two different texts with one code), or a map that does not fit its data."""


def text_code(text: str) -> int:
    """The stable non-negative int64 code of a text id."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") & (2**63 - 1)


def session_code(value: int | str) -> int:
    """A session id a client sent: its number, or a text session's code (sessions are never mapped back, so
    either kind is taken whatever the shop's export held)."""
    text = str(value).strip()
    return int(text) if re.fullmatch(r"[0-9]{1,18}", text) else text_code(text)


def _codes(texts: pl.Series) -> pl.Series:
    distinct = texts.drop_nulls().unique()
    coded = pl.Series([text_code(t) for t in distinct.to_list()], dtype=pl.Int64)
    return texts.replace_strict(distinct, coded, default=None, return_dtype=pl.Int64)


def code_expr(text: pl.Expr) -> pl.Expr:
    """`text_code` of each (stripped) text; null stays null. Hashes each distinct value once."""
    return text.cast(pl.String).str.strip_chars().map_batches(_codes, return_dtype=pl.Int64)


def is_integer_text(text: pl.Expr) -> pl.Expr:
    """Whether the (stripped) text is a decimal int64 as `INTEGER_TEXT` describes; null stays null."""
    stripped = text.cast(pl.String).str.strip_chars()
    return stripped.str.contains(INTEGER_TEXT) & stripped.cast(pl.Int64, strict=False).is_not_null()


@dataclass(frozen=True)
class IdMap:
    """One id column's kind and, for text ids, every code's shop id: encode what a request sends, decode what an
    answer returns."""

    column: str
    kind: str
    shop_ids: dict[int, str] | None = None  # text ids: code -> the shop's id

    def encode(self, value: int | str) -> int:
        """The code of a shop id as a request sent it (a JSON number or string). Raises IdError for text that is
        no id of this kind (integer ids: a decimal int64)."""
        if self.kind == "text":
            return text_code(str(value).strip())
        text = str(value).strip()
        if not re.fullmatch(r"-?[0-9]{1,19}", text) or not -(2**63) <= int(text) < 2**63:
            raise IdError(f"this shop's {self.column}s are integers (a JSON number or a decimal string), got "
                          f"{value!r}")
        return int(text)

    def decode(self, code: int) -> int | str:
        """The shop's id of ``code`` (text ids: as the shop wrote it; a code never seen: its number)."""
        if self.kind == "integer" or self.shop_ids is None:
            return code
        return self.shop_ids.get(code, code)

    def merged(self, other: IdMap) -> IdMap:
        """This map with ``other``'s codes too: a model trained on another snapshot of the catalogue knows items
        this one lacks. Refuses maps of two kinds (a model of another shop, or of this one before its ids were
        recoded)."""
        if other.kind != self.kind:
            raise IdError(f"{self.column}: these ids are {self.kind} but the model's are {other.kind}: it was "
                          "trained on another shop's data, or before this one's ids were read as they are now")
        if self.kind == "integer":
            return self
        return IdMap(self.column, "text", {**(other.shop_ids or {}), **(self.shop_ids or {})})

    @staticmethod
    def path(folder: Path, column: str) -> Path:
        return folder / f"ids_{column}.parquet"

    @classmethod
    def read(cls, folder: str | Path, column: str, kind: str | None = None) -> IdMap:
        """``column``'s map saved in ``folder`` (`write_id_map`). ``kind`` None: text when there is a map, else
        integer; text ids with no map (event, session and request ids) decode to their codes."""
        path = cls.path(Path(folder), column)
        if kind not in (None, *KINDS):
            raise IdError(f"{column}: id kind {kind!r} is not one of {KINDS}")
        if not path.is_file():
            return cls(column, kind or "integer")
        frame = pl.read_parquet(path)
        return cls(column, "text", dict(zip(frame[CODE].to_list(), frame[SHOP_ID].to_list(), strict=True)))


def id_map_frame(texts: pl.Series, column: str) -> pl.DataFrame:
    """(code, id) for every distinct text id; refuses two texts with one code (odds ~n²/2⁶⁴: never in practice)."""
    distinct = texts.drop_nulls().cast(pl.String).str.strip_chars().unique().sort()
    frame = pl.DataFrame({CODE: _codes(distinct), SHOP_ID: distinct})
    clash = frame.filter(pl.col(CODE).is_duplicated())
    if clash.height:
        raise IdError(f"{column}: the ids {clash[SHOP_ID].head(4).to_list()} share one 63-bit code; "
                      "set ingest.ids." + column + ": integer after mapping them to numbers yourself")
    return frame


def write_id_map(folder: Path, column: str, frame: pl.DataFrame | None) -> None:
    """Save ``column``'s map (`id_map_frame`) in ``folder``; None (integer ids): nothing is written."""
    if frame is not None:
        frame.write_parquet(IdMap.path(folder, column))


def export_id_maps(export_dir: str | Path) -> dict[str, IdMap]:
    """The id maps a model export carries: its ``export.json``'s kinds and the maps in its ``ids/`` folder (none
    for an export made before the maps travelled with it)."""
    kinds = json.loads((Path(export_dir) / "export.json").read_text()).get("ids", {})
    return {column: IdMap.read(Path(export_dir) / EXPORT_ID_MAPS, column, kind) for column, kind in kinds.items()
            if column in MAPPED_IDS}
