"""The request log's lines: what a ranked answer logs, read back as JSON, against the arrays it was given."""

from __future__ import annotations

import json

import numpy as np

from recsys.eventlog.requests import RequestLog


def test_a_ranked_answer_logs_the_shown_rows_and_the_shared_inputs_once(tmp_path):
    log = RequestLog(tmp_path)
    views = np.array([[0.1], [2.5], [np.float32(1) / 3]], dtype=np.float32)
    history = np.broadcast_to(np.array([[7, 8, 9]]), (3, 3))  # the user's, shared by every candidate
    category = np.arange(12).reshape(3, 4)[:, ::2]  # not C-contiguous: written all the same
    query = {"user_id": np.array([[42]]), "user_history": np.array([[7, 8, 9]])}
    log.add(2**62 + 5, 11, "production", query, [103, 101], np.array([0.75, 0.25], np.float32), False, False, 9.5,
            ("ds-1", {"views": views, "user_history": history, "category": category}, np.array([2, 0])))
    log.flush()
    row = json.loads(log.path.read_text())
    assert row["request_id"] == 2**62 + 5 and row["items"] == [103, 101] and row["scores"] == [0.75, 0.25]
    assert row["inputs"] == {"user_id": 42, "user_history": [7, 8, 9]}
    ranked = row["ranked"]
    assert ranked["dataset"] == "ds-1" and ranked["shared"] == {"user_history": [7, 8, 9]}
    assert ranked["inputs"]["category"] == [[8, 10], [0, 2]]  # shown rows 2 then 0
    assert np.array(ranked["inputs"]["views"], np.float32).tolist() == views[[2, 0]].tolist()  # float32 exactly
