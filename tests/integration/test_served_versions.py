"""Which versions a real tritonserver serves is what the last rollout named, also after the server restarts.

Three versions of a tiny ranker in the repository (``latest: 2`` would serve 2 and 3); a rollout names an older
production (1) and a newer candidate (2); Triton is stopped and started again on the same repository.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http as httpclient

from recsys.deploy import rollout, server, triton_control
from recsys.deploy.repository import CONFIG_FILE, CPU_CONFIG_FILE, add_version, served_versions
from recsys.deploy.rollout import RolloutConflict, RolloutState
from recsys.io import atomic_write_text
from tests.tiny_onnx import export_tiny_ranker

pytestmark = pytest.mark.integration
SCHEMA = "abc123"
RECSYS = str(Path(sys.executable).with_name("recsys"))


def recsys(*args: str) -> str:
    proc = subprocess.run([RECSYS, *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def ready_versions(info, model="ranker") -> set[str]:
    client = httpclient.InferenceServerClient(info.http_url)
    try:
        index = client.get_model_repository_index()
    finally:
        client.close()
    return {m["version"] for m in index if m["name"] == model and m.get("state") == "READY"}


def missing(info, state: RolloutState, versions=None) -> list[str]:
    """`triton_control.missing_versions` as the app calls it, with the gRPC asyncio client."""
    async def ask() -> list[str]:
        client = grpc_aio.InferenceServerClient(info.grpc_url)
        try:
            return await triton_control.missing_versions(state.model, versions or state.versions,
                                                         client.is_model_ready)
        finally:
            await client.close()

    return asyncio.run(ask())


@pytest.fixture
def repo(tmp_path):
    export = export_tiny_ranker(tmp_path / "export", schema_hash=SCHEMA)
    root = tmp_path / "triton_models"
    for number in ("1", "2", "3"):
        assert add_version(root, export, expected_schema_hash=SCHEMA).name == number
    return root


def test_a_restarted_triton_serves_exactly_what_the_rollout_names(repo, tmp_path):
    run_dir, state_file = tmp_path / "run", tmp_path / "rollout.json"
    info = server.start(repo, ["ranker"], run_dir=run_dir)
    try:
        assert ready_versions(info) == {"2", "3"}  # no rollout yet: the configs' latest 2
        state = triton_control.apply(state_file, RolloutState(model="ranker", production="1", candidate="2",
                                                              candidate_share=0.5),
                                     "test: production 1, candidate 2", expect_revision=0, info=info, grace_s=0.1)
        assert ready_versions(info) == {"1", "2"}
        assert missing(info, state) == [] and missing(info, state, ["1", "2", "3"]) == ["3"]
        assert served_versions(repo, "ranker") == [1, 2]

        # a stale writer is refused before it touches Triton or the configs
        configs = [(repo / "ranker" / f).read_bytes() for f in (CONFIG_FILE, CPU_CONFIG_FILE)]
        with pytest.raises(RolloutConflict, match="at revision 1, but this change was based on revision 0"):
            triton_control.apply(state_file, RolloutState(model="ranker", production="3"), "test: stale",
                                 expect_revision=0, info=info, grace_s=0.1)
        assert [(repo / "ranker" / f).read_bytes() for f in (CONFIG_FILE, CPU_CONFIG_FILE)] == configs
        assert rollout.read(state_file) == state and ready_versions(info) == {"1", "2"}

        # a version added now is not served until a rollout names it, even by a reload of the model
        assert add_version(repo, export_tiny_ranker(tmp_path / "export-4", schema_hash=SCHEMA)).name == "4"
        server.load_model(info, "ranker")
        assert ready_versions(info) == {"1", "2"}

        # restarted by another process on the same repository, as anyone may: `recsys triton stop`, `start`
        recsys("triton", "stop", "--run-dir", str(run_dir))
        recsys("triton", "start", "--repository", str(repo), "--model", "ranker", "--run-dir", str(run_dir))
        info = server.read_state(run_dir)
        assert ready_versions(info) == {"1", "2"}  # both versions the rollout names, and nothing else
        assert missing(info, rollout.read(state_file)) == []
        assert "pinned   ranker (versions 1, 2)" in recsys("triton", "status", "--run-dir", str(run_dir))

        promoted = triton_control.apply(state_file, RolloutState(model="ranker", production="2"), "test: promote 2",
                                        expect_revision=state.revision, info=info, grace_s=0.1)
        assert ready_versions(info) == {"2"} and missing(info, promoted) == []
        assert missing(info, state) == ["1"]  # what a readiness check on the older state would report

        # the file moves on while a new candidate loads (a replica's rollback lands first): the apply is refused
        # and Triton is put back to what it served
        with concurrent.futures.ThreadPoolExecutor(1) as pool, rollout.locked(state_file):
            canary = pool.submit(triton_control.apply, state_file, RolloutState(
                model="ranker", production="2", candidate="3", candidate_share=0.1), "test: canary 3",
                expect_revision=promoted.revision, info=info, grace_s=0.1)
            deadline = time.monotonic() + 120
            while "3" not in ready_versions(info) and not canary.done() and time.monotonic() < deadline:
                time.sleep(0.05)  # until the candidate is loaded and the apply waits for the file's lock
            assert ready_versions(info) == {"2", "3"}
            atomic_write_text(state_file, json.dumps(replace(promoted, revision=promoted.revision + 1,
                                                             reason="a replica's write").to_dict()))
        with pytest.raises(RolloutConflict, match=f"at revision {promoted.revision + 1}, but this change was based "
                                                  f"on revision {promoted.revision}"):
            canary.result(timeout=120)
        assert rollout.read(state_file).reason == "a replica's write"
        assert ready_versions(info) == {"2"} and served_versions(repo, "ranker") == [2]
    finally:
        server.stop(run_dir)
