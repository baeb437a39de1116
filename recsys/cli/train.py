"""``recsys train dlrm|two-tower``: a distributed training run on Ray Train."""

from __future__ import annotations

import argparse

from recsys.config import load_config
from recsys.schema import PROJECT_ROOT
from recsys.training.config import TrainConfig

MODELS = ("dlrm", "two-tower")

DEFAULT_CONFIG = str(PROJECT_ROOT / "configs" / "train" / "default.yaml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"training config YAML (default: {DEFAULT_CONFIG})")
    p.add_argument("--dataset", help="dataset folder (default: the config's, else the newest under runs/datasets)")
    p.add_argument("--workers", type=int, help="Ray Train workers (default: the config's)")
    p.add_argument("--gpus-per-worker", type=int, help="GPUs per worker; 0 trains on CPU with gloo")
    p.add_argument("--export", action="store_true", help="export the trained model to <run>/export when done "
                   "(ONNX, parity-checked; the two-tower's item index too), as `recsys export` does")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set dlrm.interaction=dcn (repeatable)")


def add_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train", help="train the two-tower retriever or the DLRM ranker on Ray Train",
        description="Train a model on N Ray Train workers: each reads its own shards of the dataset, TorchRec "
                    "shards the embedding tables across the workers, PyTorch Lightning runs the loop.")
    sub = train.add_subparsers(dest="model", metavar="<model>", required=True)
    for model, help_text in (("dlrm", "the DLRM click ranker (ranking examples)"),
                             ("two-tower", "the two-tower retriever (retrieval examples)"),
                             ("both", "both models at the same time, on the same cluster (their start-up overlaps; "
                                      "with --workers 0 one after the other); a {model} in --set name=... becomes "
                                      "each model's name")):
        add_arguments(sub.add_parser(model, help=help_text, description=f"Train {help_text}."))
    train.set_defaults(func=cmd_train)


def config_from(args: argparse.Namespace) -> TrainConfig:
    overrides = list(args.overrides) + (["export=true"] if getattr(args, "export", False) else [])
    for key, value in (("dataset", args.dataset), ("workers", args.workers),
                       ("gpus_per_worker", args.gpus_per_worker)):
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(TrainConfig, args.config, overrides)


def summary(result) -> str:
    lines = [f"{result.task} trained on dataset {result.dataset_id}",
             "  loss per epoch: " + " -> ".join(f"{x:.4f}" for x in result.epoch_losses)]
    if result.monitor:
        lines.append(f"  early stopping on {result.monitor}: kept epoch {result.kept_epoch} of the "
                     f"{len(result.epoch_losses)} trained (its {result.monitor} "
                     f"{result.metrics.get(result.monitor, float('nan')):.4f})")
    lines += [f"  {k:<24} {v:.4f}" for k, v in sorted(result.metrics.items()) if k.startswith(("val/", "test/"))]
    # over every impression; within each user's impressions; the clicks within each request, scored as served
    for metric in ("auc", "gauc", "ndcg@10"):
        model, popular = result.metrics.get(f"test/{metric}"), result.baselines.get(f"popularity_{metric}")
        if result.task != "dlrm" or model is None or popular is None:
            continue
        name = metric.upper() if "@" not in metric else "NDCG@10 within requests"
        line = f"  test {name}: model {model:.4f} | popularity {popular:.4f}"
        if (logistic := result.baselines.get(f"logistic_{metric}")) is not None:
            line += f" | logistic regression {logistic:.4f}"
        if metric != "ndcg@10" and (oracle := result.baselines.get(f"oracle_{metric}")) is not None:
            line += f" | oracle {oracle:.4f} (model reaches {(model - 0.5) / (oracle - 0.5):.1%} of the oracle's " \
                    "lift over chance)"
        lines.append(line)
    if "test/recall@100" in result.metrics and result.baselines:
        model, popular = result.metrics["test/recall@100"], result.baselines["popularity_recall@100"]
        line = f"  test recall@100: model {model:.4f} | popularity {popular:.4f} ({model / popular:.2f}x)"
        if "oracle_recall@100" in result.baselines:
            oracle = result.baselines["oracle_recall@100"]
            line += f" | oracle {oracle:.4f} (model reaches {model / oracle:.1%} of it)"
        lines.append(line)
    lines.append("  embedding tables sharded by TorchRec's planner:")
    lines += [f"    {table:<56} {kind}" for table, kind in sorted(result.sharding.items())]
    lines.append(f"  run folder: {result.path}" + ("  (resumed from a checkpoint)" if result.resumed else ""))
    lines.append(f"  model checkpoint: {result.checkpoint}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from recsys.training.job import run, run_together  # torch, TorchRec and Ray load only when training

    if args.model != "both":
        cfg = config_from(args)
        print(summary(run(args.model, replace(cfg, name=cfg.name.replace("{model}", args.model)))))
        return 0
    base = config_from(args)
    results = run_together({m: replace(base, name=base.name.replace("{model}", m)) for m in MODELS})
    print("\n\n".join(summary(r) for r in results.values()))
    if base.export:
        print(lists_summary(results["two-tower"], results["dlrm"]))
    return 0


def lists_summary(retrieval, ranking) -> str:
    """The lists the two exported models would serve, scored on a generated shop (`recsys.evaluation.list_quality`);
    written to the DLRM run's ``lists.json``."""
    import json
    from pathlib import Path

    from recsys.data.dataset import Dataset
    from recsys.evaluation.list_quality import evaluate_exports, table
    from recsys.schema import load_schema

    schema = load_schema()
    dataset = Dataset.open(ranking.dataset_path, schema)
    found = evaluate_exports(dataset, schema, str(Path(retrieval.path) / "export"),
                             str(Path(ranking.path) / "export" / "dlrm"))
    if found is None:
        return "\n(no list metric: the dataset is a real shop's, without a true click model)"
    users, scores = found
    (Path(ranking.path) / "lists.json").write_text(json.dumps({"users": len(users), "lists": [
        s.to_dict() for s in scores]}, indent=2))
    return (f"\nthe top-10 lists both models would serve {len(users)} known users, built offline as serving does, "
            f"expected clicks under the generator's click model:\n{table(scores)}")


def main_for(model: str, argv: list[str] | None = None) -> int:
    """What the thin ``training/<model>.py`` entry points call."""
    assert model in MODELS
    parser = argparse.ArgumentParser(prog=f"training/{model.replace('-', '_')}.py",
                                     description=f"Train {model} on Ray Train (same as `recsys train {model}`).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.model = model
    return cmd_train(args)
