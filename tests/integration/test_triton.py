"""The real tritonserver on a Triton model repository: started once for the module with `recsys triton start`.

Scores through HTTP and gRPC match in-process ONNX Runtime and torch; concurrent single requests are merged by
the dynamic batcher; a model with a foreign schema hash is refused; a new version loads while serving; outputs
are never silently empty; `recsys triton stop` leaves no process behind.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from recsys.deploy import server
from recsys.deploy.repository import TritonModelSettings, add_version
from recsys.errors import RecsysError
from recsys.processes import cmdline
from tests.tiny_onnx import batch, export_tiny_ranker, set_onnx_schema_hash, torch_scores

pytestmark = pytest.mark.integration
RECSYS = str(Path(sys.executable).with_name("recsys"))
SCHEMA = "abc123"
SETTINGS = TritonModelSettings(max_queue_delay_us=2000)


def recsys(*args, ok=True):
    proc = subprocess.run([RECSYS, *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """ranker v1 (torch seed 0), and ranker_badhash: a v1 whose model.onnx was swapped for another schema's."""
    work = tmp_path_factory.mktemp("triton")
    root = work / "triton_models"
    # a 2 ms batching window (default 0.5 ms) so the merging shows however loaded the shared test machine is
    add_version(root, export_tiny_ranker(work / "export-v1", schema_hash=SCHEMA, seed=0), expected_schema_hash=SCHEMA,
                settings=SETTINGS)
    bad = add_version(root, export_tiny_ranker(work / "export-bad", name="ranker_badhash", schema_hash=SCHEMA))
    set_onnx_schema_hash(bad / "model.onnx", "feed42")
    return root


@pytest.fixture(scope="module")
def triton(repo):
    run_dir = repo.parent / "run"
    started = time.monotonic()
    out = recsys("triton", "start", "--repository", str(repo), "--model", "ranker", "--run-dir", str(run_dir)).stdout
    assert "tritonserver ready" in out and "configs/cpu.pbtxt" in out, out
    info = server.read_state(run_dir)
    print(f"tritonserver started and ready in {time.monotonic() - started:.1f} s")
    yield info
    server.stop(run_dir)  # normally already stopped by the last test


def inputs_for(module, data):
    made = []
    for name, array in data.items():
        tensor = module.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(array)
        made.append(tensor)
    return made


def onnx_scores(repo, version, data):
    session = ort.InferenceSession(str(repo / "ranker" / str(version) / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(["probability"], data)[0]


def stats(client, name="ranker"):
    """(inference_count, execution_count) summed over the model's versions."""
    entries = client.get_inference_statistics(name, as_json=True)["model_stats"]  # gRPC gives int64s as strings
    return sum(int(e.get("inference_count", 0)) for e in entries), sum(int(e.get("execution_count", 0))
                                                                      for e in entries)


def settled_stats(client, expected_inferences, timeout=10.0):
    """Triton's Python backend records statistics just after it answers: wait until they add up."""
    deadline = time.monotonic() + timeout
    while (current := stats(client))[0] < expected_inferences and time.monotonic() < deadline:
        time.sleep(0.05)
    return current


def test_health_metadata_and_metrics_answer(triton):
    with server._NO_PROXY.open(f"http://{triton.http_url}/v2/health/ready", timeout=5) as response:
        assert response.status == 200
    http = httpclient.InferenceServerClient(triton.http_url)
    grpc = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        assert http.is_server_live() and http.is_model_ready("ranker") and grpc.is_model_ready("ranker")
        meta = http.get_model_metadata("ranker")
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
            ("item_id", "INT64", [-1, 1]), ("history", "INT64", [-1, 20]), ("dense", "FP32", [-1, 3])]
        assert meta["outputs"] == [{"name": "probability", "datatype": "FP32", "shape": [-1, 1]}]
        assert grpc.get_model_metadata("ranker", as_json=True)["outputs"][0]["name"] == "probability"
        config = http.get_model_config("ranker")
        assert config["backend"] == "python" and config["parameters"]["schema_hash"]["string_value"] == SCHEMA
    finally:
        http.close()
        grpc.close()
    with server._NO_PROXY.open(triton.metrics_url, timeout=5) as response:
        metrics = response.read().decode()
    assert 'nv_inference_request_success{model="ranker",version="1"}' in metrics


def test_status_from_another_process(triton):
    status = json.loads(recsys("triton", "status", "--run-dir", triton.run_dir, "--json").stdout)
    assert status["alive"] and status["ready"] and status["loaded"] == {"ranker": ["1"]}
    assert status["info"]["pid"] == triton.pid and status["info"]["grpc_port"] == triton.grpc_port
    assert f"http://{triton.http_url}" in recsys("triton", "status", "--run-dir", triton.run_dir).stdout


def test_http_and_grpc_match_onnxruntime_and_torch(triton, repo):
    data = batch(64, seed=3)
    http = httpclient.InferenceServerClient(triton.http_url)
    grpc = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        by_http = http.infer("ranker", inputs_for(httpclient, data), model_version="1").as_numpy("probability")
        by_grpc = grpc.infer("ranker", inputs_for(grpcclient, data), model_version="1").as_numpy("probability")
    finally:
        http.close()
        grpc.close()
    expected = onnx_scores(repo, 1, data)
    assert by_http.shape == by_grpc.shape == (64, 1)
    np.testing.assert_allclose(by_http, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(by_grpc, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(by_http, torch_scores(data, seed=0), rtol=0, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_outputs_are_never_empty(triton, repo, rows):
    """The known trap: numpy 2 under this Python-backend stub reads inputs wrong and answers with empty tensors
    through as_numpy() / Tensor(name, array), without an error. The model moves data with DLPack instead; this
    fails if an answer ever comes back empty, short or wrong."""
    data = batch(rows, seed=rows)
    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        result = client.infer("ranker", inputs_for(httpclient, data), model_version="1")
    finally:
        client.close()
    output = result.as_numpy("probability")
    assert result.get_output("probability")["shape"] == [rows, 1]
    assert output is not None and output.shape == (rows, 1) and output.size == rows
    assert np.isfinite(output).all() and ((output > 0) & (output < 1)).all()
    np.testing.assert_allclose(output, onnx_scores(repo, 1, data), rtol=0, atol=1e-5)


def test_dynamic_batching_merges_concurrent_single_requests(triton, repo):
    n = 256
    data = batch(n, seed=11)
    answers, errors, done = [None] * n, [], threading.Semaphore(0)

    def collect(i, result, error):
        if error is not None:
            errors.append(error)
        else:
            answers[i] = result.as_numpy("probability")
        done.release()

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        inferences, executions = settled_stats(client, 0)
        requests = [inputs_for(grpcclient, {k: v[i:i + 1] for k, v in data.items()}) for i in range(n)]
        started = time.perf_counter()
        for i, request in enumerate(requests):  # all in flight at once, one row each
            client.async_infer("ranker", request, callback=partial(collect, i), model_version="1")
        for _ in range(n):
            assert done.acquire(timeout=60)
        seconds = time.perf_counter() - started
        inferences_after, executions_after = settled_stats(client, inferences + n)
    finally:
        client.close()
    assert not errors, errors[:3]
    np.testing.assert_allclose(np.concatenate(answers), onnx_scores(repo, 1, data), rtol=0, atol=1e-5)
    merged, runs = inferences_after - inferences, executions_after - executions
    print(f"{n} concurrent single-row requests in {seconds:.2f} s ({n / seconds:.0f} req/s): {runs} model "
          f"executions (mean batch {merged / runs:.1f})")
    assert merged == n
    assert runs < merged / 2  # the dynamic batcher merged requests into shared executions


def test_a_model_with_a_foreign_schema_hash_is_refused(triton):
    with pytest.raises(RecsysError) as err:
        server.load_model(triton, "ranker_badhash")
    message = str(err.value)
    assert "ranker_badhash" in message and "schema hash 'feed42'" in message and f"schema hash '{SCHEMA}'" in message
    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        assert not client.is_model_ready("ranker_badhash") and client.is_model_ready("ranker")
    finally:
        client.close()


def test_the_server_refuses_to_start_on_a_model_it_cannot_load(repo, tmp_path):
    with pytest.raises(RecsysError, match="schema hash 'feed42'"):
        server.start(repo, ["ranker_badhash"], run_dir=tmp_path / "run", ready_timeout_s=60)
    assert server.read_state(tmp_path / "run") is None
    with pytest.raises(RecsysError, match=r"no model\(s\) \['nope'\]"):
        server.start(repo, ["nope"], run_dir=tmp_path / "run")
    with socket.socket() as taken:  # a port asked for but in use: one clear line, no retry on other ports
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RecsysError, match=f"Socket '127.0.0.1:{port}' already in use"):
            server.start(repo, [], run_dir=tmp_path / "run", http_port=port)
    assert server.read_state(tmp_path / "run") is None


def test_a_new_version_loads_while_serving(triton, repo, tmp_path):
    data = batch(16, seed=5)
    failures, served = [], []
    stop = threading.Event()

    def keep_asking():
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        while not stop.is_set():
            try:
                result = client.infer("ranker", inputs_for(grpcclient, data))
                assert result.as_numpy("probability").shape == (16, 1)
                served.append(result.get_response().model_version)
            except Exception as exc:  # any failed or empty answer while the new version loads
                failures.append(repr(exc))
        client.close()

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        time.sleep(0.5)
        v2 = add_version(repo, export_tiny_ranker(tmp_path / "export-v2", schema_hash=SCHEMA, seed=1),
                         expected_schema_hash=SCHEMA, settings=SETTINGS)
        assert v2.name == "2"
        server.load_model(triton, "ranker")
        time.sleep(0.5)
    finally:
        stop.set()
        asker.join(timeout=30)
    assert not failures, failures[:3]
    assert served[0] == "1" and served[-1] == "2", (served[:3], served[-3:])

    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        newest = client.infer("ranker", inputs_for(httpclient, data))  # no version: the newest
        first = client.infer("ranker", inputs_for(httpclient, data), model_version="1")  # latest 2 keeps v1
        index = {(m["name"], m.get("version")): m.get("state") for m in client.get_model_repository_index()}
    finally:
        client.close()
    assert newest.get_response()["model_version"] == "2"
    np.testing.assert_allclose(newest.as_numpy("probability"), onnx_scores(repo, 2, data), rtol=0, atol=1e-5)
    np.testing.assert_allclose(newest.as_numpy("probability"), torch_scores(data, seed=1), rtol=0, atol=1e-5)
    np.testing.assert_allclose(first.as_numpy("probability"), onnx_scores(repo, 1, data), rtol=0, atol=1e-5)
    assert not np.allclose(newest.as_numpy("probability"), first.as_numpy("probability"))
    assert index[("ranker", "1")] == index[("ranker", "2")] == "READY"


def test_unload_and_load_again(triton):
    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        server.unload_model(triton, "ranker")
        deadline = time.monotonic() + 20
        while client.is_model_ready("ranker") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not client.is_model_ready("ranker")
        server.load_model(triton, "ranker")
        assert client.is_model_ready("ranker", "1") and client.is_model_ready("ranker", "2")
        data = batch(3)
        result = client.infer("ranker", inputs_for(httpclient, data))
        assert result.as_numpy("probability").shape == (3, 1)
    finally:
        client.close()


def test_the_ranker_client_ranks_on_its_first_call_once_a_restarted_server_is_back(repo, tmp_path):
    """The app's gRPC client fails while Triton is down and ranks again on its very next call once Triton is back
    on its ports. gRPC shares a subchannel, with its reconnect backoff, between a process's channels to one
    address: while another channel held it, a new client kept failing fast ("Connection refused") for a second or
    more after the server was back (the app answered degraded after /readyz had said ready)."""
    import asyncio

    from serving.ranker import TritonRanker

    data = batch(5)
    expected = onnx_scores(repo, 1, data).reshape(-1)
    first = server.start(repo, ["ranker"], run_dir=tmp_path)
    ranker = TritonRanker(first.grpc_url, "ranker", "1", timeout_s=5.0)
    probe = grpcclient.InferenceServerClient(first.grpc_url)  # another client to the same address, kept open
    loop = asyncio.new_event_loop()
    try:
        assert probe.is_server_live()
        np.testing.assert_allclose(loop.run_until_complete(ranker.rank(data))[0], expected, atol=1e-5)
        server.stop(tmp_path)
        down = loop.run_until_complete(ranker.rank_within_deadline(data, None, 5.0))
        assert down.scores is None and down.note.startswith("ranker unavailable"), down
        assert not loop.run_until_complete(ranker.ready(1.0))
        server.start(repo, ["ranker"], run_dir=tmp_path, http_port=first.http_port, grpc_port=first.grpc_port,
                     metrics_port=first.metrics_port)
        assert loop.run_until_complete(ranker.ready(1.0))
        back = loop.run_until_complete(ranker.rank_within_deadline(data, None, 5.0))
        assert back.scores is not None, back.note
        np.testing.assert_allclose(back.scores, expected, atol=1e-5)
    finally:
        loop.close()
        probe.close()
        server.stop(tmp_path)


def test_a_failing_call_does_not_cancel_the_calls_in_flight_beside_it(triton, repo):
    """One request's failed call replaces the app's shared gRPC client; the calls other requests have in flight
    on the old one still answer (closing it cancelled them: CancelledError out of the ranker, a 500 when Triton
    died under load)."""
    import asyncio

    from serving.ranker import TritonRanker

    good, bad = batch(200), {**batch(3), "user_id": np.zeros((3, 7), dtype=np.int64)}  # a shape Triton refuses
    ranker = TritonRanker(triton.grpc_url, "ranker", "1", timeout_s=10.0)

    async def requests() -> list:
        out = []
        for delay in [0, 0.0005, 0.001, 0.002, 0.004] * 4:  # the failure lands at different points of the calls
            in_flight = [asyncio.ensure_future(ranker.rank_within_deadline(good, None, 10.0)) for _ in range(3)]
            await asyncio.sleep(delay)
            failed = await ranker.rank_within_deadline(bad, None, 10.0)
            assert failed.scores is None and failed.note.startswith("ranker unavailable"), failed
            out += await asyncio.gather(*in_flight, return_exceptions=True)
        return out

    answers = asyncio.run(requests())
    assert [type(a).__name__ for a in answers if not hasattr(a, "scores")] == []  # nothing raised
    assert [a.note for a in answers if a.scores is None] == []  # and every one ranked
    np.testing.assert_allclose(answers[0].scores, onnx_scores(repo, 1, good).reshape(-1), atol=1e-5)


def test_stop_leaves_no_process(triton):
    out = recsys("triton", "stop", "--run-dir", triton.run_dir).stdout
    assert f"tritonserver (pid {triton.pid}) stopped" in out
    assert not server.is_alive(triton.pid) and server.group_members(triton.pid) == []
    leftovers = [p for p in Path("/proc").iterdir()
                 if p.name.isdigit() and triton.repository.encode() in cmdline(int(p.name))]
    assert leftovers == []  # no server or Python-backend stub serving this repository
    for port in (triton.http_port, triton.grpc_port, triton.metrics_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
    assert recsys("triton", "status", "--run-dir", triton.run_dir, ok=False).returncode == 1
    assert "no tritonserver was running" in recsys("triton", "stop", "--run-dir", triton.run_dir).stdout
