"""The self-retraining loop (``recsys loop``): monitoring -> data -> training -> registry -> serving, unattended.

A *cycle* starts on a retraining request (a line the monitor's ``retrain`` alert sink appended to the trigger file),
on a schedule, or by hand, and runs these steps in order:

``validate``      the shop's export plus the app's fed-back events, checked as one batch against the production
                  model's dataset (`recsys.data.validate.validate` with ``extra_events``);
``build``         a new dataset version: content-addressed, so from here on the cycle is keyed by the dataset id;
``train.<model>`` each model on Ray Train as run ``loop-<dataset id>-<model>`` (an interrupted run resumes from
                  its last checkpoint);
``register.<model>`` export (ONNX, parity-checked) into the running Triton's repository and register the version;
``candidate``     the registry's ``candidate`` alias through the gate, for each model;
``canary``        the new ranker for ``canary.share`` of users on the live app (the rollout state, as
                  ``recsys models deploy --share`` writes it);
``judge``         once each variant has ``canary.min_impressions`` impressions since the canary began: the
                  candidate is promoted to production (registry gate, then the rollout) if its click-through rate
                  beats production's at ``canary.alpha`` (`recsys.retrain.verdict`: users as the unit);
                  otherwise, or when ``canary.max_wait_minutes`` pass first, it is rolled back and withdrawn.

Every finished step is written to ``<work_dir>/state.json`` (atomically) with what it produced, and every step
first looks for its own output, so a loop killed at any point continues where it stopped when it is started again,
without redoing what was finished.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from recsys.config import load_config
from recsys.errors import RecsysError
from recsys.retrain.config import RANKER, GateConfig, LoopConfig
from recsys.retrain.state import LoopState, timestamp
from recsys.retrain.verdict import CanaryCounts, ctr_test

log = logging.getLogger(__name__)


class Loop:
    def __init__(self, cfg: LoopConfig, registry: str | None = None, echo: Callable[[str], None] = print):
        self.cfg, self.registry, self.echo = cfg, registry, echo
        self.state = LoopState(Path(cfg.work_dir) / "state.json")

    # -- when to start ---------------------------------------------------------------------------------------------
    def _new_requests(self) -> list[dict[str, Any]]:
        path = Path(self.cfg.trigger_file)
        if not path.is_file():
            return []
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return [json.loads(line) for line in lines[self.state.data.get("triggers_seen", 0):]]

    def due(self, now: datetime | None = None) -> str | None:
        """Why a cycle should start now, or None."""
        now = now or datetime.now(UTC)
        cycles = self.state.data["cycles"]
        last = cycles[-1] if cycles else None
        cooldown = timedelta(minutes=self.cfg.cooldown_minutes)
        if last and cooldown and now - datetime.fromisoformat(last["ended_at"]) < cooldown:
            return None
        if requests := self._new_requests():
            return f"alert: {requests[-1].get('reason', 'retraining requested')}" + (
                f" (+{len(requests) - 1} more request(s))" if len(requests) > 1 else "")
        if self.cfg.schedule_hours > 0:
            started = datetime.fromisoformat(last["started_at"]) if last else None
            if started is None or now - started >= timedelta(hours=self.cfg.schedule_hours):
                return f"schedule: every {self.cfg.schedule_hours:g} h"
        return None

    def start(self, reason: str) -> dict[str, Any]:
        if self.state.current is not None:
            raise RecsysError(f"cycle {self.state.current['id']} is unfinished; resume it first (recsys loop run)")
        path = Path(self.cfg.trigger_file)
        seen = len([x for x in path.read_text().splitlines() if x.strip()]) if path.is_file() else 0
        cycle_id = f"cycle-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        self.state.data |= {"current": {"id": cycle_id, "reason": reason, "started_at": timestamp(), "steps": {}},
                            "triggers_seen": seen}
        self.state.save()
        self.echo(f"{cycle_id}: started ({reason})")
        return self.state.current

    def tick(self, force_reason: str | None = None) -> dict[str, Any] | None:
        """Resume the unfinished cycle, or start one if asked to or due; the finished cycle, or None."""
        if self.state.current is None:
            reason = force_reason or self.due()
            if reason is None:
                return None
            self.start(reason)
        return self.run_cycle()

    # -- one cycle -------------------------------------------------------------------------------------------------
    def _step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if (done := self.state.done(name)) is not None:
            self.echo(f"  {name}: done before ({done['finished_at']}), skipped")
            return done
        started = time.perf_counter()
        self.echo(f"  {name} ...")
        result = fn()
        result["seconds"] = round(time.perf_counter() - started, 1)
        self.echo(f"  {name}: {result.get('summary', 'done')} ({result['seconds']} s)")
        return self.state.finish_step(name, result)

    def run_cycle(self) -> dict[str, Any]:
        """Run the current cycle's unfinished steps. A refused batch or gate ends the cycle (``data_refused``,
        ``refused``); any other failure leaves it unfinished, to resume once fixed."""
        from recsys.data.ingest import IngestSchemaError
        from recsys.data.validate import ValidationFailed
        from recsys.registry import BelowFloor, GateRefused

        cycle = self.state.current
        assert cycle is not None
        self.echo(f"{cycle['id']}: {cycle['reason']}")
        try:
            self._step("validate", self._validate)
        except (ValidationFailed, IngestSchemaError) as exc:  # the data, not the machinery: end, with why
            return self._end("data_refused", str(exc))
        try:
            built = self._step("build", self._build)
            if built.get("same_as_production"):
                return self._end("no_new_data", built["summary"])
            for model in self.cfg.models:
                self._step(f"train.{model}", lambda m=model: self._train(m, built))
            for model in self.cfg.models:
                self._step(f"register.{model}", lambda m=model: self._register(m))
            self._step("candidate", self._candidate)
            self._step("canary", self._canary)
            verdict = self._step("judge", self._judge)
        except (GateRefused, BelowFloor) as exc:  # a model below its floor is not registered: production stays
            return self._end("refused", str(exc))
        return self._end(verdict["outcome"], verdict["summary"])

    def _end(self, outcome: str, detail: str) -> dict[str, Any]:
        cycle = self.state.end_cycle(outcome, detail)
        self.echo(f"{cycle['id']}: {outcome}: {detail}")
        return cycle

    # -- steps -----------------------------------------------------------------------------------------------------
    def _data_config(self):
        from recsys.config import DataConfig

        return load_config(DataConfig, self.cfg.data_config, list(self.cfg.data_overrides))

    def _production(self, model: str):
        from recsys.registry import get_version
        from recsys.registry.aliases import current

        version = current(model, "production", self.registry)
        return None if version is None else get_version(model, version, self.registry)

    def _validate(self) -> dict[str, Any]:
        from recsys.data.validate import validate
        from recsys.eventlog.feedback import FEEDBACK_INGEST

        data = self._data_config()
        out = Path(self.cfg.work_dir) / self.state.current["id"] / "validated"
        production = self._production(RANKER)
        reference = None
        if production is not None and (p := production.tags.get("dataset_path")):
            reference = Path(p) / "manifest.json"
        feedback = [(self.cfg.event_log, FEEDBACK_INGEST)] if list(Path(self.cfg.event_log).glob(
            FEEDBACK_INGEST.events)) else []
        report = validate(self.cfg.source, out, data.validation, data.ingest,
                          reference=reference if reference and reference.is_file() else None, extra_events=feedback)
        events = report.tables["events"]
        warnings = [c["message"] for c in report.stats_checks]  # (failures raised ValidationFailed)
        return {"validated": str(out), "events": events.good, "quarantined": events.bad,
                "feedback_sources": len(feedback), "warnings": warnings,
                "summary": f"{events.good:,} events kept, {events.bad:,} quarantined"
                           + (f"; {len(warnings)} batch-statistics warning(s)" if warnings else "")}

    def _build(self) -> dict[str, Any]:
        from recsys.data.dataset import build_dataset
        from recsys.schema import load_schema

        validated = self.state.done("validate")["validated"]
        dataset, built = build_dataset(validated, self.cfg.datasets, load_schema(), self._data_config().build,
                                       progress=False)
        production = self._production(RANKER)
        same = production is not None and production.tags.get("dataset_id") == dataset.id
        self.state.current["dataset"] = dataset.id
        return {"dataset": dataset.id, "path": str(dataset.path.resolve()), "built_now": built,
                "same_as_production": same,
                "summary": f"dataset {dataset.id}" + (" (production was trained on it already)" if same else "")}

    def _run_name(self, model: str) -> str:
        return f"loop-{self.state.current['dataset']}-{model}"

    def _train(self, model: str, built: dict[str, Any]) -> dict[str, Any]:
        from recsys.registry import PRIMARY_METRIC
        from recsys.training.config import TrainConfig
        from recsys.training.job import run

        name = self._run_name(model)
        run_dir = Path(self.cfg.train_output).resolve() / name
        if not (run_dir / "metrics.json").is_file():  # (present: finished before the state could say so)
            sets = [*self.cfg.train_overrides, f"dataset={built['path']}", f"name={name}",
                    f"output={self.cfg.train_output}"]
            run(model, load_config(TrainConfig, self.cfg.train_config, sets))
        summary = json.loads((run_dir / "metrics.json").read_text())
        test = {k: v for k, v in summary["metrics"].items() if k.startswith("test/")}
        key = PRIMARY_METRIC[model]
        baseline = summary.get("baselines", {}).get(key.replace("test/", "popularity_"))
        return {"run": str(run_dir), "metrics": test,
                "summary": f"{key} {test.get(key, float('nan')):.4f}"
                           + (f" (popularity {baseline:.4f})" if baseline is not None else "")}

    def _register(self, model: str) -> dict[str, Any]:
        from recsys.cli.export import publish
        from recsys.deploy.repository import version_of_run
        from recsys.registry import list_versions, register

        name = self._run_name(model)
        existing = [v for v in list_versions(model, self.registry) if v.tags.get("training_run") == name]
        export = Path(self.cfg.train_output).resolve() / name / "export"
        repository = self._triton().repository if model == RANKER else None
        added = version_of_run(repository, RANKER, name) if repository else None
        if existing:
            version = existing[-1]
        elif added is not None and (export / "export.json").is_file():  # exported and added before a crash
            version = register(export, {RANKER: added}, registry=self.registry)
        else:
            _, _, version = publish(export.parent, export, repository, registry=self.registry)
        return {"version": version.version, "summary": f"{model} v{version.version} ({name})"}

    def _triton(self):
        from recsys.deploy.server import running

        return running(self.cfg.triton_run_dir)

    def _gate(self, model: str) -> dict[str, Any]:
        """The registry gate's settings for ``model`` (the loop config's ``gate``)."""
        gate = self.cfg.gate.get(model, GateConfig())
        return {"metric": gate.metric or None, "floor": gate.floor}

    def _candidate(self) -> dict[str, Any]:
        from recsys.registry import promote, withdraw_candidate
        from recsys.registry.aliases import current

        moved, changed = {}, []
        try:
            for model in self.cfg.models:
                version = self.state.done(f"register.{model}")["version"]
                if current(model, "candidate", self.registry) != version:
                    promote(model, version, "candidate", reason=f"recsys loop {self.state.current['id']}",
                            who="recsys loop", registry=self.registry, **self._gate(model))
                    changed.append(model)
                moved[model] = version
        except Exception as exc:  # all or nothing: no model stays a candidate without the others
            for model in changed:
                withdraw_candidate(model, reason=f"recsys loop {self.state.current['id']}: another model's move "
                                   f"failed ({exc})", who="recsys loop", registry=self.registry)
            raise
        return {"versions": moved, "summary": ", ".join(f"{m} v{v}" for m, v in moved.items()) + " are candidates"}

    def _rollout(self, share: float, reason: str, action: str):
        """Serve the registry's aliases, the candidate (if any) for ``share`` of users (applying the same state
        again, as a resumed step may, changes nothing but the revision)."""
        from recsys.deploy import rollout, triton_control
        from recsys.deploy.registry_state import state_from_registry

        info = self._triton()
        base = rollout.read(self.cfg.rollout_file)
        state = state_from_registry(info, share, RANKER, registry=self.registry, base=base)
        triton_control.apply(self.cfg.rollout_file, state, reason, expect_revision=base.revision if base else 0,
                             info=info, grace_s=self.cfg.canary.grace_s,
                             event={"action": action, "registry": state.registry})
        return state

    def _canary(self) -> dict[str, Any]:
        from recsys.registry.aliases import current

        version = self.state.done("register." + RANKER)["version"]
        if current(RANKER, "candidate", self.registry) != version:
            raise RecsysError(f"the registry's {RANKER} candidate is not v{version} any more (moved by hand?)")
        state = self._rollout(self.cfg.canary.share, f"recsys loop {self.state.current['id']}: canary v{version} "
                              f"for {self.cfg.canary.share:.0%} of users", "canary")
        return {"since": timestamp(), "triton_version": state.candidate, "share": state.candidate_share,
                "summary": f"{RANKER} v{version} (Triton version {state.candidate}) serves "
                           f"{state.candidate_share:.0%} of users"}

    def _left_the_canary(self) -> str | None:
        """Why the canary's candidate no longer serves (a replica rolled it back on its own, or someone changed the
        rollout), from the rollout state; None while it serves."""
        from recsys.deploy import rollout

        ours = self.state.done("canary")["triton_version"]
        served = rollout.read(self.cfg.rollout_file)
        if served is None:
            return f"the rollout state {self.cfg.rollout_file} is gone"
        if served.candidate != ours:
            return f"the rollout no longer serves it (revision {served.revision}: {served.reason})"
        return None

    def _judge(self) -> dict[str, Any]:
        c = self.cfg.canary
        since = datetime.fromisoformat(self.state.done("canary")["since"])
        deadline = since + timedelta(minutes=c.max_wait_minutes)
        canary = CanaryCounts(self.cfg.event_log, since)
        while True:
            if (why := self._left_the_canary()) is not None:
                return self._roll_back(f"the candidate left the canary: {why}")
            now = datetime.now(UTC)
            counts = canary.update()
            seen = {v: int(x[:, 1].sum()) for v, x in counts.items()}
            rates = {v: {"users": len(x), "impressions": seen[v], "clicks": int(x[:, 0].sum()),
                         "ctr": x[:, 0].sum() / seen[v]} for v, x in counts.items()}
            if min(seen.get("candidate", 0), seen.get("production", 0)) >= c.min_impressions:
                z, p = ctr_test(counts["candidate"], counts["production"])
                cand, prod = rates["candidate"], rates["production"]
                compared = (f"candidate CTR {cand['ctr']:.4f} ({cand['impressions']:,} impressions, {cand['users']} "
                            f"users) vs production {prod['ctr']:.4f} ({prod['impressions']:,}, {prod['users']}): "
                            f"z = {z:.2f}, one-sided p = {p:.2g}")
                if p < c.alpha:
                    return self._promote(compared) | {"rates": rates, "z": z, "p_value": p}
                return self._roll_back(f"not better at alpha {c.alpha:g}: {compared}") | {
                    "rates": rates, "z": z, "p_value": p}
            if now >= deadline:
                return self._roll_back(f"no verdict within {c.max_wait_minutes:g} min (impressions {seen}, "
                                       f"{c.min_impressions:,} needed per variant)") | {"rates": rates}
            time.sleep(c.poll_s)

    def _promote(self, compared: str) -> dict[str, Any]:
        """All or nothing: every model to production through the gate and the rollout to production only; if any
        of it fails, the aliases moved so far go back and the candidate is rolled back (outcome ``refused``)."""
        from recsys.registry import promote, withdraw_candidate
        from recsys.registry.aliases import current, record_move

        reason = f"recsys loop {self.state.current['id']}: won the canary ({compared})"
        promoted, moved = {}, []  # moved: (model, the production version before)
        try:
            for model in self.cfg.models:
                version = self.state.done(f"register.{model}")["version"]
                before = current(model, "production", self.registry)
                if before != version:
                    promote(model, version, "production", reason=reason, who="recsys loop", registry=self.registry,
                            **self._gate(model))
                    moved.append((model, before))
                promoted[model] = version
            self._rollout(0.0, reason, "promote")
        except Exception as exc:
            why = f"the promotion failed ({type(exc).__name__}: {exc})"
            for model, before in reversed(moved):
                record_move(model, "production", before, "undo", reason=f"recsys loop {self.state.current['id']}: "
                            f"{why}; undone", who="recsys loop", registry=self.registry)
            rolled = self._roll_back(why)
            return rolled | {"outcome": "refused", "undone": [m for m, _ in moved]}
        for model in self.cfg.models:
            if current(model, "candidate", self.registry) is not None:
                withdraw_candidate(model, reason="promoted to production", who="recsys loop", registry=self.registry)
        return {"outcome": "promoted", "versions": promoted,
                "summary": ", ".join(f"{m} v{v}" for m, v in promoted.items()) + f" promoted: {compared}"}

    def _roll_back(self, why: str) -> dict[str, Any]:
        from recsys.registry import withdraw_candidate
        from recsys.registry.aliases import current

        reason = f"recsys loop {self.state.current['id']}: {why}"
        for model in self.cfg.models:
            if current(model, "candidate", self.registry) is not None:
                withdraw_candidate(model, reason=reason, who="recsys loop", registry=self.registry)
        self._rollout(0.0, reason, "canary_rollback")
        return {"outcome": "rolled_back", "summary": f"rolled back: {why}"}
