"""The load generator the serving tests drive by counts: a request that waits for an action waits however long the
action takes (a slow machine makes the run longer, not different)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.load import run_load, tally


class _Echo(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = json.dumps({"got": json.loads(body), "at": time.monotonic()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_request_after_an_action_is_sent_once_the_action_has_finished(echo):
    done = {}

    def slow() -> None:  # far longer than the 10 requests between it and the one that waits for it
        time.sleep(1.5)
        done["at"] = time.monotonic()

    outcomes = run_load(echo, 30, 50.0, lambda i: ("/x", {"i": i}), at={5: slow}, after={15: 5})
    assert tally(outcomes) == {"ok": 30} and [o.body["got"]["i"] for o in outcomes] == list(range(30))
    arrived = [o.body["at"] for o in outcomes]
    assert all(t > done["at"] for t in arrived[15:])  # every request from 15 on came after it


def test_after_must_name_an_earlier_requests_action(echo):
    with pytest.raises(ValueError, match="must name the actions of earlier requests"):
        run_load(echo, 5, 50.0, lambda i: ("/x", {}), at={3: lambda: None}, after={2: 3})
    with pytest.raises(ValueError, match="must name the actions"):
        run_load(echo, 5, 50.0, lambda i: ("/x", {}), after={2: 1})
