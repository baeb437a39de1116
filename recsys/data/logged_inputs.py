"""Log-and-train: ranking examples that carry the inputs the app served, not inputs computed again
(``build.logged_inputs``: the app's event-log folders).

A ranked answer logs what the ranker was given for each shown item (`recsys.eventlog.requests`). A dataset built with
this option joins those rows to its ranking examples by (request id, item): an impression the app logged takes the
logged value of every input (its ``position`` stays the slot it was shown in, which serving cannot know); the other
impressions, and any input the log lacks, keep the value the build computes. With the live store the two agree (the
parity test), so the difference is what serving really saw: snapshot features while the store was down, a feature
computed differently online, a bug. That is what the next model then trains on.

Logged values were encoded with the encoders of the dataset that served them (named in each line). Where the new
dataset's encoder of an input is the same, the value is taken as it is; a vocabulary that changed is translated
through the raw value (the old index to the value, the value to the new index: an item id, a category); an input
whose encoding cannot be inverted and changed (refitted bucket boundaries) is computed instead. The manifest says
which, for how many rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from recsys.data.encoders import Encoders, FittedEncoding
from recsys.data.features import META_ITEM, META_REQUEST
from recsys.errors import RecsysError
from recsys.eventlog.requests import REQUEST_GLOB
from recsys.hashing import file_sha256
from recsys.schema import FeatureSchema, Kind

DATASET = "_logged_dataset"
LOGGED = "__logged:"  # the prefix of a logged column while it is joined
NOT_LOGGED = ("position",)  # set by the impression, not by serving


class LoggedInputsError(RecsysError, ValueError):
    """The logs cannot be used: the message names the file or the dataset."""


def log_files(roots: list[str]) -> list[Path]:
    return sorted(p for root in roots for p in Path(root).glob(REQUEST_GLOB))


def digest(roots: list[str]) -> str:
    """What the logs hold, for the dataset id: their files' content, in name order."""
    return ",".join(file_sha256(p) for p in log_files(roots))


def read_logged(roots: list[str]) -> pl.DataFrame | None:
    """One row per item a ranked answer showed: request id, item, the serving dataset and each logged input
    (``__logged:<name>``); None when no answer logged its ranking inputs."""
    columns: dict[str, list[Any]] = {META_REQUEST: [], META_ITEM: [], DATASET: []}
    for path in log_files(roots):
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if '"ranked"' not in line:
                    continue
                try:
                    row = json.loads(line)
                    ranked, items = row["ranked"], row["items"]
                    inputs = ranked["inputs"] | {n: [v] * len(items) for n, v in ranked.get("shared", {}).items()}
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    if not line.endswith("\n"):  # the line a replica was writing when the build read
                        continue
                    raise LoggedInputsError(f"{path}:{n}: not a request-log line with ranked inputs ({exc})") from exc
                count = len(columns[META_REQUEST])
                for name, values in inputs.items():
                    column = columns.setdefault(LOGGED + name, [None] * count)
                    column.extend(values)
                columns[META_REQUEST].extend([int(row["request_id"])] * len(items))
                columns[META_ITEM].extend(int(i) for i in items)
                columns[DATASET].extend([ranked["dataset"]] * len(items))
                for column in columns.values():  # an input this line lacks
                    column.extend([None] * (count + len(items) - len(column)))
    if not columns[META_REQUEST]:
        return None
    frame = pl.DataFrame(columns, strict=False)
    return frame.unique([META_REQUEST, META_ITEM], keep="last", maintain_order=True)  # (a retried request)


def _translate(value: pl.Expr, old: FittedEncoding, new: FittedEncoding, history: bool) -> pl.Expr | None:
    """``value`` (encoded by ``old``) encoded by ``new``: itself when the encodings are the same (a dense input's
    transform, a hash, the same vocabulary); None when that cannot be done."""
    if old.to_dict() == new.to_dict():
        return value
    if old.type != "vocab" or new.type != "vocab":
        return None
    index = {v: i for i, v in enumerate(new.vocab, 1)}
    mapping = {0: 0} | {i: index.get(v, 0) for i, v in enumerate(old.vocab, 1)}
    if history:
        return value.list.eval(pl.element().replace_strict(mapping, default=0, return_dtype=pl.Int64))
    return value.replace_strict(mapping, default=0, return_dtype=pl.Int64)


def prepare(logged: pl.DataFrame, schema: FeatureSchema, encoders: Encoders, datasets_root: Path
            ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The logged rows with every input in ``encoders``' encoding (null where it cannot be), and the account of it
    for the manifest. The serving datasets' encoders are read from ``datasets_root/<id>/encoders.json``."""
    features = {f.name: f for f in schema.used_by("dlrm") if f.name not in NOT_LOGGED}
    names = [n for n in features if LOGGED + n in logged.columns]
    parts, how = [], {}
    for (dataset_id,), part in logged.group_by(DATASET, maintain_order=True):
        path = datasets_root / str(dataset_id) / "encoders.json"
        if not path.is_file():
            raise LoggedInputsError(f"the request log names serving dataset {dataset_id}, which is not at {path}: "
                                    "its encoders are needed to read the logged inputs")
        old = Encoders.load(path, schema)
        exprs = []
        for name in names:
            f, key = features[name], features[name].embedding_table
            value = pl.col(LOGGED + name)
            if f.kind != Kind.HISTORY and isinstance(logged.schema[LOGGED + name], pl.List):
                value = value.list.first()  # (a scalar input is logged as a row of one: the model's shape)
            translated = _translate(value, old.fitted[key], encoders.fitted[key], f.kind == Kind.HISTORY)
            how.setdefault(name, set()).add("as logged" if translated is value else
                                            "re-encoded" if translated is not None else "computed")
            exprs.append((translated if translated is not None else pl.lit(None)).alias(LOGGED + name))
        parts.append(part.select(META_REQUEST, META_ITEM, *exprs))
    frame = pl.concat(parts, how="diagonal_relaxed")
    account = {"rows": frame.height, "datasets": logged[DATASET].unique().sort().to_list(),
               "inputs": {n: " / ".join(sorted(how[n])) for n in names}}
    return frame, account


def with_logged(examples: pl.DataFrame, logged: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """``examples`` (encoded ranking examples) with the logged value of every input where the app logged one;
    and how many examples took logged values."""
    joined = examples.join(logged.with_columns(pl.lit(True).alias("__was_logged")), on=[META_REQUEST, META_ITEM],
                           how="left", maintain_order="left")
    names = [c.removeprefix(LOGGED) for c in logged.columns if c.startswith(LOGGED) and
             c.removeprefix(LOGGED) in examples.columns]
    out = joined.with_columns(pl.coalesce(pl.col(LOGGED + n).cast(examples.schema[n]), pl.col(n)).alias(n)
                              for n in names)
    return out.select(examples.columns), int(joined["__was_logged"].sum() or 0)

