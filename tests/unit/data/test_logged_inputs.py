"""Log-and-train on hand-made request logs: the logged value where the app logged one, translated where a
vocabulary changed, computed where an encoding changed that cannot be inverted; the slot stays the impression's."""

from __future__ import annotations

import json

import polars as pl
import pytest

from recsys.data.encoders import Encoders, FittedEncoding
from recsys.data.logged_inputs import LoggedInputsError, prepare, read_logged, with_logged
from recsys.schema import load_schema

HISTORY = 3


def _encoders(schema, category_vocab, price_bounds) -> Encoders:
    return Encoders(schema.hash, {
        "user_views": FittedEncoding("dense", params={"transform": "log1p"}),
        "item_category": FittedEncoding("vocab", cardinality=len(category_vocab) + 1, vocab=category_vocab),
        "item_price_bucket": FittedEncoding("buckets", cardinality=len(price_bounds) + 2, boundaries=price_bounds),
        "item_id": FittedEncoding("vocab", cardinality=4, vocab=[11, 12, 13]),
    })


def _line(request_id, items, inputs, shared, dataset="ds-old") -> str:
    return json.dumps({"request_id": request_id, "items": items,
                       "ranked": {"dataset": dataset, "inputs": inputs, "shared": shared}})


@pytest.fixture
def logs(tmp_path):
    schema = load_schema()
    (tmp_path / "datasets" / "ds-old").mkdir(parents=True)
    _encoders(schema, ["b", "a"], [10.0, 20.0]).save(tmp_path / "datasets" / "ds-old" / "encoders.json")
    folder = tmp_path / "events" / "requests"
    folder.mkdir(parents=True)
    lines = [json.dumps({"request_id": 6, "items": [1], "inputs": {}}),  # a cold start: nothing ranked
             _line(7, [1, 2], {"item_category": [[1], [2]], "item_price_bucket": [[2], [3]], "position": [[1], [1]]},
                   {"user_views": [2.0], "user_history": [1, 2, 0]})]  # (the user's inputs: once for the list)
    (folder / "requests-a.jsonl").write_text("\n".join(lines) + "\n" + '{"request_id": 9, "ranked"')  # torn tail
    return schema, tmp_path


def test_logged_inputs_replace_the_computed_ones_translated_where_they_can_be(logs):
    schema, root = logs
    new = _encoders(schema, ["a", "b", "c"], [10.0, 25.0])  # the vocabulary grew, the buckets were refitted
    rows = read_logged([str(root / "events")])
    logged, account = prepare(rows, schema, new, root / "datasets")
    assert account == {"rows": 2, "datasets": ["ds-old"], "inputs": {
        "user_views": "as logged", "user_history": "as logged", "item_category": "re-encoded",
        "item_price_bucket": "computed"}}
    examples = pl.DataFrame({
        "_request": [7, 7, 8], "_item": [1, 2, 1], "user_views": [0.5, 0.5, 0.5], "item_category": [3, 3, 3],
        "item_price_bucket": [4, 4, 4], "position": [1, 2, 3],
        "user_history": pl.Series([[3, 0, 0]] * 3, dtype=pl.Array(pl.Int64, HISTORY))},
        schema_overrides={"user_views": pl.Float32})
    out, taken = with_logged(examples, logged)
    assert taken == 2 and out.columns == examples.columns and out.schema == examples.schema
    assert out["user_views"].to_list() == [2.0, 2.0, 0.5]
    assert out["item_category"].to_list() == [2, 1, 3]  # old 1 = "b" = new 2; old 2 = "a" = new 1
    assert out["item_price_bucket"].to_list() == [4, 4, 4]  # computed: the old buckets cannot be inverted
    assert out["position"].to_list() == [1, 2, 3]  # the slot shown in, not serving's default
    assert out["user_history"].to_list() == [[1, 2, 0], [1, 2, 0], [3, 0, 0]]


def test_a_log_naming_a_dataset_that_is_gone_or_a_broken_line_is_refused(logs):
    schema, root = logs
    rows = read_logged([str(root / "events")])
    with pytest.raises(LoggedInputsError, match="ds-old"):
        prepare(rows, schema, _encoders(schema, ["a"], [1.0]), root / "elsewhere")
    (root / "events" / "requests" / "requests-b.jsonl").write_text('{"request_id": 1, "ranked": {}}\n')
    with pytest.raises(LoggedInputsError, match=r"requests-b\.jsonl:1"):
        read_logged([str(root / "events")])
