"""Hyperparameter sweeps: Ray Tune samples training-config values, each trial is a full training run.

A trial is a Tune function trainable that launches the Ray Train job (``recsys.training.job.run``), the pattern
Ray documents for Tune with Ray Train V2: Train's per-epoch reports reach Tune through ``TuneReportCallback`` (or,
for a run in the trial's own process, ``ray.tune.report`` in its thread), and ASHA stops the trials that fall
behind after ``grace_period`` epochs. Every trial is its own run folder under the sweep's folder and its own W&B
run; the W&B runs of a sweep share one group, the sweep's name.

Tune stops a trial by ending its process, which would kill the Train run mid-step: its W&B run unfinished, no
metrics.json, and its workers' placement group left holding their CPUs (Train's cleaner of it needs the dashboard).
So when Tune stops a trial, the trial first asks its training run to stop at the next step (``StopWhenAsked``)
and waits for it to finish cleanly.

``sweep(load_sweep("configs/sweep/dlrm.yaml"))`` is what ``recsys tune`` and ``training/sweep.py`` call; the
config and its checks are in ``recsys.training.sweep_config``.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from recsys.config import from_dict
from recsys.errors import RecsysError
from recsys.training.config import TrainConfig
from recsys.training.sweep_config import SweepConfig, check, flatten, metric_and_mode, trial_config

STOP_FILE = "STOP"  # in a trial's run folder: asks its training run to stop
STOP_TIMEOUT_S = 600  # how long a stopped trial waits for its training run to finish (Tune's own limit)


def _domain(kind: str, args: list):
    from ray import tune

    if kind == "grid":
        return tune.grid_search(args)
    if kind == "choice":
        return tune.choice(args)
    return getattr(tune, kind)(*args)


def _trial_name(trial) -> str:
    counter = trial.trial_id.rsplit("_", 1)[-1]
    return f"trial-{int(counter):03d}" if counter.isdigit() else f"trial-{trial.trial_id}"


_RUNNING: dict[str, tuple[Path, threading.Event]] = {}  # in a trial's process: trial -> (stop file, run finished)


def _trial(values: dict[str, Any], task: str, base: dict[str, Any], sweep_dir: str, group: str) -> None:
    """One Tune trial: a full training run whose epoch reports Train forwards to Tune; ASHA may stop it."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from recsys.training.job import run

    name = ray.tune.get_context().get_trial_name()
    cfg = replace(trial_config(base, values), output=sweep_dir, name=name)
    stop_file, finished = Path(sweep_dir) / name / STOP_FILE, threading.Event()
    _RUNNING[name] = (stop_file, finished)
    report = TuneReportCallback() if cfg.workers else _report_in_this_thread(stop_file)
    try:
        run(task, cfg, group=group, hyperparameters=values, callbacks=[report], stop_file=str(stop_file),
            progress=False)
    finally:
        finished.set()


def _report_in_this_thread(stop_file: Path):
    """Tune's report callback for a run in the trial's own thread (local mode): ``ray.tune.report`` there, which
    waits until Tune has taken each epoch's metrics.

    ``TuneReportCallback`` passes them through a queue actor whose timed ``get`` (``asyncio.wait_for`` on Python 3.11)
    can drop an item that arrives as the wait times out: an epoch Tune never sees, a trial ASHA never judges. Once
    the sweep has asked the run to stop, the partial epoch it ends with is not reported."""
    import ray.tune
    from ray.train import UserCallback

    class ReportInThisThread(UserCallback):
        def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
            if not stop_file.exists():
                ray.tune.report(metrics[0])

    return ReportInThisThread()


def _stop_runs() -> None:
    """Ask the training run of this process's trial to stop at its next step, and wait until it has finished."""
    from ray.train._internal.session import get_session

    while _RUNNING:
        _, (stop_file, finished) = _RUNNING.popitem()
        if finished.is_set():
            continue
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        stop_file.touch()
        # a run in this process waits in ray.tune.report for a next step Tune will not ask for: let it go on to
        # the stop (Tune's own finish() releases it too, but with its stop event set, which exits the thread)
        get_session().continue_lock.release()
        finished.wait(STOP_TIMEOUT_S)


class _StopsItsRun:
    """Mixed into a trial's Tune trainable: when Tune stops the trial, or hands its process to the next trial
    (``reuse_actors``), its training run stops cleanly first."""

    def cleanup(self) -> None:
        _stop_runs()
        super().cleanup()

    def reset_config(self, new_config: dict) -> bool:
        _stop_runs()
        return super().reset_config(new_config)


def _trainable(cfg: SweepConfig, base: dict[str, Any], sweep_dir: Path, group: str):
    """``_trial`` as a Tune function trainable."""
    from ray import tune

    function = tune.with_parameters(_trial, task=cfg.task, base=base, sweep_dir=str(sweep_dir), group=group)
    function.__mixins__ = (_StopsItsRun,)  # Tune's wrapper of a function trainable inherits these first
    return function


def _asha(cfg: SweepConfig, epochs: int):
    """ASHA over epochs that remembers the trials it stopped.

    No rung lies at a trial's last epoch and ``stop_last_trials`` is off, so ASHA never stops a trial that has
    trained all its epochs while it finishes (final evaluation, metrics.json, the W&B run).
    """
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class EarlyStopping(ASHAScheduler):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.stopped: dict[str, int] = {}  # trial id -> epochs it had trained

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP:
                self.stopped[trial.trial_id] = result["training_iteration"]
            return decision

    return EarlyStopping(time_attr="training_iteration", max_t=epochs - 1, grace_period=cfg.grace_period,
                         reduction_factor=cfg.reduction_factor, stop_last_trials=False)


@dataclass
class SweepResult:
    name: str
    path: str  # the sweep folder: sweep.json, one run folder per trial, tune/ (Ray Tune's experiment state)
    metric: str
    mode: str
    epochs: int  # per trial, unless stopped early
    trials: list[dict[str, Any]]  # best first; see `_trial_record`
    best: dict[str, Any] | None

    def table(self) -> str:
        keys = list(dict.fromkeys(k for t in self.trials for k in t["hyperparameters"]))
        rows = [["trial", self.metric, "epochs", "stopped early", *keys]]
        for t in self.trials:
            value = "failed" if t["error"] else "-" if t["metric"] is None else f"{t['metric']:.4f}"
            rows.append([t["name"], value, f"{t['epochs']}/{self.epochs}", "yes" if t["stopped_early"] else "no",
                         *(_show(t["hyperparameters"].get(k)) for k in keys)])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        stopped = sum(t["stopped_early"] for t in self.trials)
        lines = [f"sweep {self.name}: {len(self.trials)} trials, best {self.metric} ({self.mode}) first; "
                 f"ASHA stopped {stopped} early"]
        lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                  for row in rows]
        if self.best:
            lines.append(f"  best: {self.best['name']} ({self.metric} {self.best['metric']:.4f}), "
                         f"run folder {self.best['path']}")
        lines.append(f"  sweep folder: {self.path} (sweep.json, a run folder and a W&B run per trial, W&B group "
                     f"{self.name})")
        return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={_show(v)}" for k, v in flatten(value).items())
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _trial_record(result, stopped: dict[str, int], sweep_dir: Path, base: dict[str, Any],
                  metric: str) -> dict[str, Any]:
    """What sweep.json keeps of a trial: for one ASHA stopped, the metrics it was judged on, which its
    metrics.json (the run's state at the step it stopped) is told about too."""
    name = Path(result.path).name
    run_dir = sweep_dir / name
    values = {k: result.config[k] for k in result.config}
    reported = result.metrics or {}
    stopped_early = reported.get("trial_id") in stopped
    summary_path = run_dir / "metrics.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if stopped_early or not summary:
        metrics = {k: v for k, v in reported.items() if k.startswith(("train/", "val/", "test/"))}
    else:
        metrics = summary["metrics"]
    if stopped_early and summary:
        summary["stopped_early"] = {"after_epochs": reported["training_iteration"], "metrics": metrics}
        summary_path.write_text(json.dumps(summary, indent=2))
    value = metrics.get(metric)
    return {"name": name, "trial_id": reported.get("trial_id"), "hyperparameters": values,
            "config": asdict(trial_config(base, values)),
            "metric": value if value is not None and math.isfinite(value) else None, "metrics": metrics,
            "epochs": int(reported.get("training_iteration", 0)), "stopped_early": stopped_early,
            "error": str(result.error) if result.error else None, "path": str(run_dir)}


def sweep(cfg: SweepConfig) -> SweepResult:
    """Run the sweep: ``cfg.trials`` training runs (at most ``cfg.max_concurrent`` at once) under ASHA."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from recsys.data.dataset import Dataset
    from recsys.schema import load_schema
    from recsys.training.job import newest_dataset

    base, space = check(cfg)
    metric, mode = metric_and_mode(cfg)
    dataset = Dataset.open(base.get("dataset") or newest_dataset(), load_schema())
    base["dataset"] = str(dataset.path.resolve())  # trials run in Tune's trial folders, not here
    train = from_dict(TrainConfig, base)
    name = cfg.name or f"sweep-{cfg.task}-{dataset.id}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = Path(cfg.output).resolve() / name
    if (sweep_dir / "sweep.json").is_file():
        raise RecsysError(f"sweep {name} already finished ({sweep_dir}); choose another name to sweep again")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(num_cpus=max(4, cfg.max_concurrent * (train.workers + 1) + 1), include_dashboard=False,
                 log_to_driver=True)
    scheduler = _asha(cfg, train.epochs)
    tuner = tune.Tuner(
        _trainable(cfg, base, sweep_dir, name),
        param_space={key: _domain(kind, args) for key, (kind, args) in space.items()},
        tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler, num_samples=cfg.trials,
                                    # Tune's own max_concurrent_trials is ignored beside a given search_alg
                                    search_alg=BasicVariantGenerator(max_concurrent=cfg.max_concurrent,
                                                                     random_state=cfg.seed),
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                                    # the next trial runs in the last one's process: torch, TorchRec and
                                    # Lightning already imported (a run in that process needs nothing else)
                                    reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(sweep_dir), name="tune"),
    )
    grid = tuner.fit()
    records = [_trial_record(r, scheduler.stopped, sweep_dir, base, metric) for r in grid]
    sign = 1 if mode == "max" else -1
    records.sort(key=lambda t: (t["metric"] is None, -sign * (t["metric"] or 0.0), t["name"]))
    best = records[0] if records and records[0]["metric"] is not None else None
    result = SweepResult(name=name, path=str(sweep_dir), metric=metric, mode=mode, epochs=train.epochs,
                         trials=records, best=best)
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "name": name, "task": cfg.task, "dataset_id": dataset.id, "metric": metric, "mode": mode,
        "sweep_config": asdict(cfg), "space": {k: {kind: args} for k, (kind, args) in space.items()},
        "scheduler": {"kind": "ASHA", "time_attr": "training_iteration", "max_t": train.epochs - 1,
                      "grace_period": cfg.grace_period, "reduction_factor": cfg.reduction_factor},
        "epochs": train.epochs, "trials": records, "best": best["name"] if best else None}, indent=2))
    return result
