"""`recsys data init` on exports in the shapes of well-known public logs (`tests.shop_layouts`): the config it
writes reads each one through validation and the build with nothing quarantined and the examples each can give."""

import polars as pl
import pytest
import yaml

from recsys.cli import main
from recsys.config import DataConfig, load_config
from recsys.data.dataset import build_dataset
from recsys.data.starter_config import InitError, starter_config, timestamp_format
from recsys.data.validate import validate
from recsys.errors import RecsysError
from recsys.training.config import TrainConfig
from recsys.training.job import run
from tests import shop_layouts
from tests.conftest import ROOT

TINY_TRAIN = ROOT / "configs" / "train" / "tiny.yaml"

LAYOUTS = {  # layout -> (its text ids, whether it has impressions, its retrieval positives, what init must map)
    "impressions_and_clicks": ({"user_id", "item_id", "request_id"}, True, ["view"],
                               {"user_id": "user", "item_id": "item", "request_id": "impression_id"}),
    "retailrocket_events": (set(), False, ["view"], {"user_id": "visitorid", "item_id": "itemid"}),
    "movielens_ratings": (set(), False, ["view"], {"user_id": "userId", "item_id": "movieId"}),
    "json_reviews": ({"user_id", "item_id"}, False, ["view"], {"user_id": "reviewerID", "item_id": "asin"}),
}


def _write(layout, raw, out):
    written = getattr(shop_layouts, layout)(raw, out)
    return written[0] if isinstance(written, tuple) else written


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_init_writes_a_config_that_reads_the_layout_to_a_dataset(layout, tiny_raw, tmp_path, schema, capsys):
    text_ids, impressions, positives, mapped = LAYOUTS[layout]
    shop = _write(layout, tiny_raw, tmp_path / "shop")
    assert main(["data", "init", "--source", str(shop), "--out", str(tmp_path / "data.yaml")]) == 0
    assert "next: recsys data validate" in capsys.readouterr().out
    text = (tmp_path / "data.yaml").read_text()
    assert ("no ranker to train" in text) == (not impressions)  # said at once, not found at training
    written = yaml.safe_load(text)
    assert {k: written["ingest"]["columns"]["events"][k] for k in mapped} == mapped
    cfg = load_config(DataConfig, tmp_path / "data.yaml")
    report = validate(shop, tmp_path / "validated", cfg.validation, cfg.ingest)
    assert all(t.bad == 0 for t in report.tables.values()), report.summary()
    assert {c for c, kind in report.ids.items() if kind == "text"} == text_ids
    dataset, _ = build_dataset(tmp_path / "validated", tmp_path / "datasets", schema, cfg.build, progress=False)
    splits = dataset.manifest.splits
    assert (splits["ranking"]["train"]["rows"] > 0) == impressions
    assert splits["retrieval"]["train"]["rows"] > 0 and splits["retrieval"]["positive_event_types"] == positives
    if not impressions:  # nothing to rank: training the ranker is one clear refusal, before any cluster starts
        train = load_config(TrainConfig, TINY_TRAIN, [f"dataset={dataset.path}", f"output={tmp_path / 'train'}"])
        with pytest.raises(RecsysError, match=r"^dlrm: dataset ds-\w+ has no ranking training examples"):
            run("dlrm", train, progress=False)
        assert not (tmp_path / "train").exists()
    lines = (shop / cfg.ingest.events).read_text().splitlines()
    source_rows = len(lines) - (0 if cfg.ingest.events.endswith(".jsonl") else 1)  # (a CSV's header)
    assert report.tables["events"].good == source_rows  # every row in, none derived away


def test_the_shops_event_names_and_a_negative_price_are_found(tmp_path, tiny_raw, schema):
    shop = _write("retailrocket_events", tiny_raw, tmp_path / "rr")
    starter = starter_config(shop, schema)
    assert starter.config["ingest"]["event_types"] == {"addtocart": "add_to_cart", "transaction": "purchase"}
    assert starter.config["ingest"]["timestamp_unit"] == "ms"
    shop, _ = shop_layouts.impressions_and_clicks(tiny_raw, tmp_path / "ic")
    products = pl.read_csv(shop / "products.csv").rename({"std_price": "price"})
    products.write_csv(shop / "products.csv")
    starter = starter_config(shop, schema)
    assert starter.config["validation"] == {"min_price": None}  # a standardised price has negative values
    assert "item_price" in starter.features["fed"] and "item_brand" in starter.features["default"]


def test_timestamps_are_told_by_their_values():
    assert timestamp_format(pl.Series(["1764547200", "1764547300"])) == {"timestamp_unit": "s"}
    assert timestamp_format(pl.Series(["1764547200000"])) == {"timestamp_unit": "ms"}
    assert timestamp_format(pl.Series(["2026-09-01T10:00:00Z"])) == {}
    assert timestamp_format(pl.Series(["01/09/2026 10:00:00"])) == {"timestamp_format": "%d/%m/%Y %H:%M:%S"}
    assert timestamp_format(pl.Series(["red", "blue"])) is None


def test_nothing_like_an_events_log_is_one_clear_error(tmp_path, schema, capsys):
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "notes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InitError, match=r"no column looks like our user_id"):
        starter_config(tmp_path / "shop", schema)
    (tmp_path / "data.yaml").write_text("x")
    assert main(["data", "init", "--source", str(tmp_path / "shop"), "--out", str(tmp_path / "data.yaml")]) == 2
    assert "exists" in capsys.readouterr().err
