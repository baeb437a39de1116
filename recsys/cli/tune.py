"""``recsys tune``: a hyperparameter sweep of a training job on Ray Tune, with ASHA early stopping."""

from __future__ import annotations

import argparse

from recsys.schema import PROJECT_ROOT

DEFAULT_CONFIG = str(PROJECT_ROOT / "configs" / "sweep" / "dlrm.yaml")

EPILOG = """\
A sweep config names the model (task:), a base training config (train_config:), fixed changes to it (train:)
and a search space of training-config fields:

  space:
    optim.dense_lr: {loguniform: [0.0001, 0.01]}   # also uniform: [low, high] and randint: [low, high)
    batch_size: {choice: [1024, 2048, 4096]}       # one sampled per trial; grid: [...] tries every one
    dlrm:                                          # fields that must change together: a choice of mappings
      choice: [{embedding_dim: 8, dense_layers: [64, 8]}, {embedding_dim: 16, dense_layers: [64, 16]}]

Each trial is a full training run (its own run folder and W&B run, all in one W&B group: the sweep's name).
ASHA stops the trials that fall behind after grace_period epochs. The sweep prints a table of the trials, best
first, and writes sweep.json in its folder (runs/sweeps/<name>/ by default); see configs/sweep/."""

DESCRIPTION = """\
Sweep hyperparameters of `recsys train`: Ray Tune samples a search space, runs every trial as a full
distributed training run, and stops the trials that fall behind early (ASHA)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"sweep config YAML (default: {DEFAULT_CONFIG})")
    p.add_argument("--dataset", help="dataset folder (default: the training config's, else the newest under "
                                     "runs/datasets)")
    p.add_argument("--trials", type=int, help="trials sampled from the search space (default: the config's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any sweep config field, e.g. --set grace_period=2, --set train.epochs=4 or "
                        "--set space.optim.dense_lr='{uniform: [0.001, 0.01]}' (repeatable)")


def add_parser(commands: argparse._SubParsersAction) -> None:
    tune = commands.add_parser(
        "tune", help="sweep training hyperparameters with Ray Tune (each trial a tracked run, ASHA early stopping)",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(tune)
    tune.set_defaults(func=cmd_tune)


def overrides_from(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.dataset is not None:
        overrides.append(f"train.dataset={args.dataset}")
    if args.trials is not None:
        overrides.append(f"trials={args.trials}")
    return overrides


def cmd_tune(args: argparse.Namespace) -> int:
    from recsys.training.sweep import sweep  # Ray Tune, torch and TorchRec load only when sweeping
    from recsys.training.sweep_config import load_sweep

    print(sweep(load_sweep(args.config, overrides_from(args))).table())
    return 0


def main(argv: list[str] | None = None) -> int:
    """What the thin ``training/sweep.py`` entry point calls."""
    parser = argparse.ArgumentParser(prog="training/sweep.py", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Sweep training hyperparameters on Ray Tune (same as "
                                                 "`recsys tune`).")
    add_arguments(parser)
    return cmd_tune(parser.parse_args(argv))
