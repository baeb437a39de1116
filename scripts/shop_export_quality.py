"""The ranker on a shop's own impressions-and-clicks log, with the default pipeline and no tuning.

Generates the low-CTR shop (`configs/data/low_ctr.yaml`: a week, a few thousand users, a 0.4% click rate), writes it
as an impressions-and-clicks export (`tests/shop_layouts.py`: text ids, no sessions, no users table, no product
views), lets `recsys data init` write the config that reads it, maps the shop's opaque attribute names as its owner
would, validates, builds and trains the ranker with `configs/train/default.yaml`, and prints the test AUC beside
popularity and logistic regression and the mean prediction against the test click rate.

    python scripts/shop_export_quality.py [--work runs/shop_export_quality] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.cli import main as recsys_main  # noqa: E402
from recsys.config import DataConfig, load_config  # noqa: E402
from recsys.data.dataset import build_dataset  # noqa: E402
from recsys.data.generate import generate  # noqa: E402
from recsys.data.validate import validate  # noqa: E402
from recsys.models.inputs import make_batch  # noqa: E402
from recsys.schema import load_schema  # noqa: E402
from recsys.training.checkpoint import load_model  # noqa: E402
from recsys.training.config import TrainConfig  # noqa: E402
from recsys.training.job import run  # noqa: E402
from tests.shop_layouts import impressions_and_clicks  # noqa: E402

OPAQUE = {"category": "c1", "brand": "c2", "price": "std_price"}  # what the shop's owner knows its columns are


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/shop_export_quality"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a training config override, e.g. --set seed=1 (repeatable)")
    args = parser.parse_args()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    shop_cfg = load_config(DataConfig, ROOT / "configs" / "data" / "low_ctr.yaml")
    generate(shop_cfg.generator, work / "raw", progress=False)
    shop, _ = impressions_and_clicks(work / "raw", work / "shop")
    assert recsys_main(["data", "init", "--source", str(shop), "--out", str(work / "data.yaml")]) == 0
    written = yaml.safe_load((work / "data.yaml").read_text())
    written["ingest"]["columns"].setdefault("items", {}).update(OPAQUE)
    written["validation"] = {"min_price": None}  # init saw no price column; the owner knows std_price is one
    (work / "data.yaml").write_text(yaml.safe_dump(written, sort_keys=False))
    cfg = load_config(DataConfig, work / "data.yaml")
    validate(shop, work / "validated", cfg.validation, cfg.ingest)
    schema = load_schema()
    dataset, _ = build_dataset(work / "validated", work / "datasets", schema, cfg.build, progress=False)
    train = load_config(TrainConfig, ROOT / "configs" / "train" / "default.yaml",
                        [f"dataset={dataset.path}", f"output={work / 'train'}", *args.overrides])
    result = run("dlrm", train, progress=False)
    model, _ = load_model(result.checkpoint)
    label = schema.label("dlrm").name
    rates = {}  # split -> (impressions, clicks, mean prediction)
    for split in ("train", "val", "test"):
        frame = dataset.read("ranking", split)
        with torch.no_grad():
            predicted = torch.sigmoid(model(make_batch(frame, model.spec))).numpy()
        rates[split] = (frame.height, int(frame[label].sum()), float(np.mean(predicted)))
    b = result.baselines
    (impressions, clicks, mean_prediction) = rates["test"]
    out = {"dataset": dataset.id, "test_impressions": impressions, "test_clicks": clicks,
           "test_auc": result.metrics["test/auc"], "popularity_auc": b["popularity_auc"],
           "logistic_auc": b["logistic_auc"], "val_auc": result.metrics["val/auc"],
           "logistic_val_auc": b["logistic_val_auc"], "mean_prediction": mean_prediction,
           "test_click_rate": clicks / impressions, "calibration": mean_prediction * impressions / clicks,
           "by_split": {s: {"impressions": n, "clicks": c, "click_rate": c / n, "mean_prediction": m}
                        for s, (n, c, m) in rates.items()}}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
