"""What a trained model is compared with: a popularity baseline, logistic regression on the same inputs
(`recsys.evaluation.logistic`: the floor a click model must clear) and the oracle.

The oracle scores every example with the generator's true click probability (``ground_truth/`` of a
generated export): no model can rank the data better. It exists only for generated data.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

import polars as pl

from recsys.data.dataset import Dataset
from recsys.data.features import META_EVENT_ID, META_USER
from recsys.evaluation.lists import NoUserOfBothClasses, gauc
from recsys.evaluation.logistic import LogisticBaseline
from recsys.evaluation.metrics import auc, log_loss
from recsys.evaluation.ranking import ndcg_metric, ranking_metrics, served_order
from recsys.schema import PROJECT_ROOT, FeatureSchema


def ground_truth_dir(dataset: Dataset) -> Path | None:
    """The generator's ground truth beside the raw export the dataset was built from, if there is one."""
    files = dataset.manifest.sources["raw"].get("events") or []
    if not files:
        return None
    raw = Path(files[0]["path"])
    for base in ([raw] if raw.is_absolute() else [Path.cwd() / raw, PROJECT_ROOT / raw]):  # older: relative
        folder = base.parent.parent / "ground_truth"
        if (folder / "impressions").is_dir():
            return folder
    return None


LOGISTIC_TRAIN_ROWS = 500_000  # logistic regression fits on at most this many training rows (a seeded sample)


def ranking_baselines(dataset: Dataset, schema: FeatureSchema, split: str = "test") -> dict[str, float]:
    """AUC, GAUC (`recsys.evaluation.lists.gauc`) and, where there are probabilities, log-loss of the baselines on
    every row of a ranking split, and ``rows``, how many rows that is (the oracle is left out unless the ground
    truth covers every row). For the test split, popularity's and logistic regression's validation AUC too
    (``popularity_val_auc``, ``logistic_val_auc``: the floor registration compares, `recsys.registry.floor`)."""
    label = schema.label("dlrm")
    popularity = next(f for f in schema.features if f.op == "item_event_count")  # item views in a window
    rows = dataset.read("ranking", split)
    df = rows.select(META_EVENT_ID, META_USER, label.name, popularity.name)
    y = df[label.name].to_numpy()
    out = {"popularity_auc": auc(y, df[popularity.name].to_numpy()), "rows": float(df.height)}
    with suppress(NoUserOfBothClasses):
        out["popularity_gauc"] = gauc(df[META_USER].to_numpy(), y, df[popularity.name].to_numpy())
    out |= {k.replace("/", "_"): v for k, v in ndcg_metric(rows, y, df[popularity.name].to_numpy(),
                                                          "popularity").items()}
    val = dataset.read("ranking", "val") if split == "test" else None
    if val is not None and 0 < val[label.name].sum() < val.height:  # what registration's floor compares
        out["popularity_val_auc"] = auc(val[label.name].to_numpy(), val[popularity.name].to_numpy())
    out |= _logistic(dataset, schema, rows, val)
    truth = ground_truth_dir(dataset)
    if truth is not None:
        p = pl.read_parquet(truth / "impressions" / "*.parquet", columns=["event_id", "p_click"])
        joined = df.join(p, left_on=META_EVENT_ID, right_on="event_id", how="inner")
        if joined.height == df.height:
            truth_y = joined[label.name].to_numpy()  # the join's row order, not df's
            out["oracle_auc"] = auc(truth_y, joined["p_click"].to_numpy())
            out["oracle_logloss"] = log_loss(truth_y, joined["p_click"].to_numpy())
            with suppress(NoUserOfBothClasses):
                out["oracle_gauc"] = gauc(joined[META_USER].to_numpy(), truth_y, joined["p_click"].to_numpy())
    return out


def _logistic(dataset: Dataset, schema: FeatureSchema, rows: pl.DataFrame,
              val: pl.DataFrame | None = None) -> dict[str, float]:
    """``logistic_auc``, ``logistic_gauc`` and ``logistic_logloss``: fitted on the training split, scored on
    ``rows`` (a split's examples); with ``val`` (the validation split's), ``logistic_val_auc`` too."""
    from recsys.models.inputs import InputSpec  # (TorchRec: only when it is needed)
    from recsys.online.features import serving_context

    spec = InputSpec.for_part(schema, "dlrm")
    train = dataset.read("ranking", "train")
    if train.height > LOGISTIC_TRAIN_ROWS:
        train = train.sample(LOGISTIC_TRAIN_ROWS, seed=0)
    if train[spec.label.name].n_unique() < 2:
        return {}
    fitted = LogisticBaseline.fit(train, spec, dataset.manifest.cardinalities)
    labels = rows[spec.label.name].to_numpy()
    metrics = ranking_metrics(labels, fitted.predict(rows), "logistic", rows[META_USER].to_numpy())
    served = served_order(rows, serving_context(schema, dataset.encoders(schema)))
    metrics |= ndcg_metric(rows, labels, fitted.predict(served), "logistic")
    if val is not None and 0 < val[spec.label.name].sum() < val.height:
        metrics["logistic_val/auc"] = auc(val[spec.label.name].to_numpy(), fitted.predict(val))
    return {name.replace("/", "_"): value for name, value in metrics.items() if not name.endswith("/rows")}
