"""The drift scenario: the whole loop at work on a live app, against simulated shoppers whose tastes shift.

`prepare` sets the stage: a shop export as of the day before the shift and one up to today (the same world,
`recsys.data.generate.ShopWorld`, whose users' tastes shift on ``drift.start_day``), both models trained on the
first and promoted to production, and Triton serving the ranker; `write_loop_config` points ``recsys loop`` at the
second.

`DriftScenario` then runs the story in ticks (a batch of `recsys.retrain.simulate.Shoppers` visits, then one
`recsys.monitoring.monitor.Monitor` evaluation): steady traffic -> the preference shift -> until the retraining alert
fires -> ``recsys loop`` runs (traffic goes on: the canary needs it) -> after. It records a `Tick` per batch;
`plot_timeline` draws them with the moments that matter. The integration test runs it small, ``scripts/demo.sh
--drift`` at the demo's scale.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from recsys.errors import RecsysError
from recsys.retrain.simulate import Shoppers
from recsys.retrain.verdict import ctr_test

# left out of the live drift check: user_recency_hours is served from the dataset's snapshot (time since the user's
# last event at the snapshot) while a training example has the time since the previous event, often within the same
# visit, so the monitor reports PSI ~3 for it on any steady traffic (a train/serve skew the batch online tables have
# by design); user_id: which users happen to visit within a short window is not a distribution to hold steady
SKIPPED_FEATURES = ("user_recency_hours", "user_id")
RETRAINING_RULES = ("data_drift_critical", "production_ctr_drop")  # the shipped rules that ask for retraining


@dataclass
class Stage:
    work: Path
    data_config: Path  # the shop up to today
    dataset: Any  # what production was trained on (`recsys.data.dataset.Dataset`)
    triton: Any  # `recsys.deploy.server.ServerInfo`
    rollout_file: Path


def prepare(work: Path, data_config: Path, train: Callable[[str, Any], Any], before_events: int,
            progress: bool = False) -> Stage:
    """Exports before and after the shift, production trained on the first (``train(task, dataset)`` returns a
    `recsys.training.job.TrainResult`), registered and promoted, and Triton serving it."""
    from recsys.cli.export import publish
    from recsys.config import DataConfig, load_config
    from recsys.data.dataset import build_dataset
    from recsys.data.generate import generate
    from recsys.data.validate import validate
    from recsys.deploy import server, triton_control
    from recsys.deploy.registry_state import state_from_registry
    from recsys.registry import promote
    from recsys.schema import load_schema

    cfg = load_config(DataConfig, data_config)
    if cfg.generator.drift.start_day is None:
        raise RecsysError(f"{data_config}: generator.drift.start_day is not set: the scenario needs a preference shift")
    before = load_config(DataConfig, data_config, [f"generator.days={cfg.generator.drift.start_day}",
                                                   f"generator.target_events={before_events}"])
    generate(before.generator, work / "export-before", progress=progress)
    generate(cfg.generator, work / "export", progress=progress)  # what the shop has exported by today
    validate(work / "export-before", work / "validated-before", cfg.validation, cfg.ingest)
    dataset, _ = build_dataset(work / "validated-before", work / "datasets", load_schema(), cfg.build,
                               progress=progress)
    repo = work / "triton_models"
    for task in ("dlrm", "two-tower"):
        trained = train(task, dataset)
        _, _, version = publish(trained.path, work / task, repo)
        promote(task, version.version, "production", reason="trained before the shift")
    triton = server.start(repo, ["dlrm"], run_dir=work / "triton")
    rollout_file = work / "rollout.json"
    triton_control.apply(rollout_file, state_from_registry(triton, 0.0), "drift scenario: production",
                         expect_revision=None)
    return Stage(work, data_config, dataset, triton, rollout_file)


def shop_config(template: Path, out: Path, days: int, **generator: Any) -> Path:
    """``template`` with its export ending today (``days`` long) and ``generator`` overrides."""
    raw = yaml.safe_load(template.read_text())
    start = (datetime.now(UTC) - timedelta(days=days)).date().isoformat()
    raw["generator"] = {**raw.get("generator", {}), "start_date": start, "days": days, **generator}
    out.write_text(yaml.safe_dump(raw))
    return out


def write_loop_config(stage: Stage, event_log: str, train_config: Path, canary: dict[str, Any],
                      train_overrides: tuple[str, ...] = ()) -> Path:
    w = stage.work
    loop = {"source": str(w / "export"), "event_log": event_log, "data_config": str(stage.data_config),
            "train_config": str(train_config), "train_overrides": list(train_overrides),
            "datasets": str(w / "datasets"), "train_output": str(w / "train"), "triton_run_dir": str(w / "triton"),
            "rollout_file": str(stage.rollout_file), "trigger_file": str(w / "retrain.jsonl"),
            "work_dir": str(w / "loop"), "cooldown_minutes": 0, "canary": canary}
    path = w / "loop.yaml"
    path.write_text(yaml.safe_dump(loop))
    return path


def monitor_factory(stage: Stage, event_log: str, rules: Path, window_s: float, min_impressions: int,
                    schema) -> Callable[[float | None], Any]:
    """Monitors with the shipped rules, the CTR rules' floor set to ``floor`` (from the steady CTR once it is known;
    None leaves them out until then). ``window_s`` bounds what a monitor keeps; each evaluation judges the traffic
    of the scenario's last ``window_ticks`` ticks."""
    from recsys.monitoring.monitor import Monitor, reference_profile

    shipped = yaml.safe_load(rules.read_text())["rules"]
    profile = reference_profile(stage.dataset, schema)

    def monitor(floor: float | None) -> Monitor:
        kept = [r if not r["metric"].startswith("ctr.") else {**r, "threshold": floor, "for": 2}
                for r in shipped if floor is not None or not r["metric"].startswith("ctr.")]
        path = stage.work / "rules.yaml"
        path.write_text(yaml.safe_dump({"rules": kept}))
        return Monitor(event_log, profile, path, window=timedelta(seconds=window_s),
                       state_file=stage.work / "alerts.json", trigger_file=stage.work / "retrain.jsonl",
                       history_file=stage.work / "history.jsonl", min_impressions=min_impressions,
                       skip_features=SKIPPED_FEATURES)

    return monitor


@dataclass
class Tick:
    at: float  # seconds since the scenario began (when the tick's visits were done)
    phase: str  # before | drift | loop | after
    # (user id, variant, impressions, clicks, expected clicks under the generator's true click model) per visit
    visits: list[tuple[int, str, int, int, float]]
    drift: float | None  # the monitor's drift.max_psi over its window
    alerts: list[str] = field(default_factory=list)  # alerts that fired at this tick
    began: str = ""  # when its first visit started (ISO, UTC)

    def totals(self, variant: str | None = None) -> tuple[int, int]:
        """(clicks, impressions) of this tick's visits (of one variant's)."""
        rows = [(clicks, shown) for _, v, shown, clicks, _ in self.visits if variant in (None, v)]
        return sum(r[0] for r in rows), sum(r[1] for r in rows)

    def ctr(self, variant: str | None = None) -> float | None:
        clicks, shown = self.totals(variant)
        return clicks / shown if shown else None


def per_user(ticks: list[Tick], phase: str, expected: bool = False) -> np.ndarray:
    """One ``(clicks, impressions)`` row per user over a phase's ticks (`recsys.retrain.verdict.ctr_test`'s input);
    with ``expected``, the clicks are those the generator's true click model expects (no coin flips)."""
    totals: dict[int, list[float]] = {}
    for t in ticks:
        if t.phase == phase:
            for user, _, shown, clicks, expect in t.visits:
                row = totals.setdefault(user, [0.0, 0])
                row[0] += expect if expected else clicks
                row[1] += shown
    return np.array(list(totals.values()), dtype=np.float64 if expected else np.int64).reshape(-1, 2)


@dataclass
class DriftScenario:
    shoppers: Shoppers
    monitor_factory: Callable[[float | None], Any]  # CTR floor (None: no CTR rule yet) -> a Monitor
    trigger_file: Path
    visits_per_tick: int = 50
    window_ticks: int = 5  # the monitor judges the traffic of the last this many ticks (counted, not timed)
    baseline_ticks: int = 4
    ctr_drop: float = 0.1  # the CTR floor: this far below the steady CTR
    max_drift_ticks: int = 20
    min_drift_ticks: int = 0  # under the shift at least this long (the CTR it is compared with after the loop)
    after_ticks: int = 4
    loop_pause_s: float = 1.0  # between ticks while the loop runs (it shares the machine)
    ticks: list[Tick] = field(default_factory=list)
    moments: dict[str, float] = field(default_factory=dict)  # shift, alert, loop_started, loop_ended
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    outcome: str | None = None  # the loop's verdict (`add_loop_moments`)
    floor: float | None = None  # the CTR rules' threshold, set from the steady CTR (`run`)

    def _tick(self, phase: str, monitor) -> Tick:
        began = datetime.now(UTC)
        visits = self.shoppers.run(self.visits_per_tick)
        self._wait_until_logged(monitor, self.shoppers.requests_sent)
        window = [*self.ticks[-(self.window_ticks - 1):], None] if self.window_ticks > 1 else [None]
        since = datetime.fromisoformat(window[0].began) if window[0] is not None else began
        snap = monitor.evaluate(since=since - timedelta(microseconds=1))
        tick = Tick(round(time.monotonic() - self.started, 2), phase, visits, snap.metrics.get("drift.max_psi"),
                    [n.rule for n in snap.notifications if n.status == "firing"], began=began.isoformat())
        self.ticks.append(tick)
        return tick

    @staticmethod
    def _wait_until_logged(monitor, sent: int, timeout_s: float = 120.0) -> None:
        """Until the app's request log (buffered by the replicas, flushed within a second) holds every request
        sent: each evaluation then judges exactly the traffic sent, however slow the machine."""
        deadline = time.monotonic() + timeout_s
        while monitor.requests.refresh() is None or monitor.requests.rows_read < sent:
            if time.monotonic() > deadline:
                raise RecsysError(f"the app logged {monitor.requests.rows_read} of the {sent} requests sent within "
                                  f"{timeout_s:.0f} s")
            time.sleep(0.1)

    def _requests(self) -> int:
        return len(self.trigger_file.read_text().splitlines()) if self.trigger_file.is_file() else 0

    def run(self, start_loop: Callable[[], subprocess.Popen],
            while_looping: Callable[[subprocess.Popen, Tick], subprocess.Popen] | None = None,
            loop_timeout_s: float = 1800.0) -> None:
        """The whole story; ``while_looping(process, tick)`` may replace the loop's process (e.g. kill and restart
        it, as a crash would)."""
        monitor = self.monitor_factory(None)
        for _ in range(self.baseline_ticks):
            self._tick("before", monitor)
        clicks, shown = per_user(self.ticks, "before").sum(axis=0)
        self.floor = float((1 - self.ctr_drop) * clicks / shown)
        monitor = self.monitor_factory(self.floor)
        self.shoppers.shift()
        self.moments["shift"] = time.monotonic() - self.started
        before = self._requests()
        for n in range(max(self.max_drift_ticks, self.min_drift_ticks)):
            tick = self._tick("drift", monitor)
            if "alert" not in self.moments and self._requests() > before:
                self.moments["alert"] = tick.at
            if "alert" in self.moments and n + 1 >= self.min_drift_ticks:
                break
        else:
            raise RecsysError(f"no retraining request within {self.max_drift_ticks} ticks of the preference shift")
        proc = start_loop()
        self.moments["loop_started"] = time.monotonic() - self.started
        deadline = time.monotonic() + loop_timeout_s
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise RecsysError(f"the loop did not finish within {loop_timeout_s:.0f} s")
            tick = self._tick("loop", monitor)
            if while_looping is not None:
                proc = while_looping(proc, tick)
            time.sleep(self.loop_pause_s)
        if proc.returncode != 0:
            raise RecsysError(f"the loop exited with {proc.returncode}")
        self.moments["loop_ended"] = time.monotonic() - self.started
        for _ in range(self.after_ticks):
            self._tick("after", monitor)

    def add_loop_moments(self, state_file: str | Path) -> None:
        """When the loop's canary began and its verdict came (from its state file), on the scenario's clock."""
        state = json.loads(Path(state_file).read_text())
        cycle = (state["cycles"] or [state["current"]])[-1] or {}
        steps = cycle.get("steps", {})
        self.outcome = cycle.get("outcome")
        for step, name, key in (("canary", "canary", "since"), ("judge", "verdict", "finished_at")):
            if step in steps:
                at = datetime.fromisoformat(steps[step][key])
                self.moments[name] = (at - self.started_at).total_seconds()

    def summary(self) -> dict[str, Any]:
        """Per phase: users, clicks, impressions, the CTR shoppers produced and the one the generator's true click
        model expects of the lists served (``expected_ctr``: what the lists are worth, without the coin flips);
        the recovery after the loop against the phase under the shift, both ways, users as the unit."""
        out: dict[str, Any] = {"moments_s": {k: round(v, 1) for k, v in self.moments.items()},
                               "ctr_floor": self.floor}
        for phase in ("before", "drift", "after"):
            users = per_user(self.ticks, phase)
            clicks, shown = (int(x) for x in users.sum(axis=0))
            expected = float(per_user(self.ticks, phase, expected=True)[:, 0].sum())
            out[phase] = {"users": len(users), "clicks": clicks, "impressions": shown,
                          "ctr": clicks / shown if shown else None, "expected_ctr": expected / shown if shown else None}
        for key, expected in (("recovery", False), ("expected_recovery", True)):
            after, drift = per_user(self.ticks, "after", expected), per_user(self.ticks, "drift", expected)
            if len(after) and len(drift):  # after the loop vs under the shift
                z, p = ctr_test(after, drift)
                out[key] = {"z": z, "p_value": p}
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"summary": self.summary(), "ticks": [asdict(t) for t in self.ticks]},
                                         indent=1))


def plot_timeline(scenario: DriftScenario, path: str | Path, psi_threshold: float = 0.2, smooth: int = 5) -> Path:
    """CTR per variant and drift score per tick, with the shift, the alert, the canary and the verdict marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, height_ratios=(2, 1))
    xs = [t.at for t in scenario.ticks]
    for variant, color in ((None, "0.3"), ("production", "tab:blue"), ("candidate", "tab:orange")):
        # each tick's CTR as a dot, and over the last `smooth` ticks (clicks / impressions) as a line
        rows = [r for r in ((t.at, *t.totals(variant)) for t in scenario.ticks) if r[2]]
        if not rows or (variant == "production" and len(rows) == len(scenario.ticks)
                        and all(t.ctr("candidate") is None for t in scenario.ticks)):
            continue  # (production alone is the same as all traffic)
        at, clicks, shown = (np.array(x, dtype=float) for x in zip(*rows, strict=True))
        window = np.ones(min(smooth, len(at)))
        rolling = np.convolve(clicks, window)[: len(at)] / np.convolve(shown, window)[: len(at)]
        label = variant or "all traffic"
        if variant is not None:
            top.plot(at, clicks / shown, "o", ms=2.5, color=color, alpha=0.45)
        top.plot(at, rolling, color=color, lw=1.8, label=f"{label} (last {len(window)} ticks)")
    top.axhline(scenario.floor, color="tab:red", ls=":", lw=1, label="CTR alert floor")
    top.set_ylabel("click-through rate")
    bottom.plot(xs, [t.drift if t.drift is not None else np.nan for t in scenario.ticks], color="tab:purple")
    bottom.axhline(psi_threshold, color="tab:red", ls=":", lw=1)
    bottom.set_ylabel("max PSI of model inputs")
    bottom.set_xlabel("seconds")
    moments = scenario.moments
    labels = {"shift": "preference shift", "alert": "CTR alert -> retrain", "canary": "canary starts",
              "verdict": scenario.outcome or "verdict", "loop_ended": "loop done"}
    for key, color in zip(labels, ("black", "tab:red", "tab:orange", "tab:green", "0.5"), strict=True):
        if key in moments:
            for ax in (top, bottom):
                ax.axvline(moments[key], color=color, ls="--", lw=1)
            top.annotate(labels[key], (moments[key], 1.0), xycoords=("data", "axes fraction"), rotation=90,
                         va="top", ha="right", fontsize=8, color=color)
    top.legend(loc="lower left", fontsize=8)
    top.set_title("Live CTR through a preference shift: alert, retrain, canary, promotion")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
