"""Which epoch's checkpoint a run keeps, and how many it must keep for that."""

from pathlib import Path

import pytest

from recsys.errors import RecsysError
from recsys.training.config import TrainConfig
from recsys.training.early_stopping import checkpoints_kept, kept_epoch


def _epochs(tmp_path: Path, values: list[float | None], deleted: tuple[int, ...] = ()) -> list:
    out = []
    for n, value in enumerate(values):
        path = tmp_path / f"epoch-{n}" / "checkpoint.ckpt"
        if n not in deleted:
            path.mkdir(parents=True)
        out.append((path, {"epoch": n, "val/loss": 1.0} | ({} if value is None else {"val/auc": value})))
    return out


def test_the_best_epoch_by_the_monitor_is_kept_the_earliest_of_equals(tmp_path):
    epochs = _epochs(tmp_path, [0.70, 0.74, 0.74, 0.72])
    path, metrics = kept_epoch(epochs, "val/auc")
    assert metrics["epoch"] == 1 and path == epochs[1][0]


def test_without_a_monitor_the_last_epoch_is_kept(tmp_path):
    epochs = _epochs(tmp_path, [0.70, 0.74, 0.72])
    assert kept_epoch(epochs, None)[1]["epoch"] == 2


def test_deleted_checkpoints_are_not_candidates(tmp_path):
    epochs = _epochs(tmp_path, [0.80, 0.74, 0.72], deleted=(0,))  # Ray Train removed the oldest
    assert kept_epoch(epochs, "val/auc")[1]["epoch"] == 1


def test_a_monitor_no_epoch_reported_is_a_clear_error(tmp_path):
    with pytest.raises(RecsysError, match=r"early stopping watches 'val/ndcg', which no epoch reported .*val/auc"):
        kept_epoch(_epochs(tmp_path, [0.7, 0.8]), "val/ndcg")
    with pytest.raises(RecsysError, match="no checkpoint that still exists"):
        kept_epoch(_epochs(tmp_path / "gone", [0.7], deleted=(0,)), "val/auc")


@pytest.mark.parametrize(("keep", "patience", "expected"), [(2, 0, 2), (2, 1, 2), (2, 3, 4), (5, 1, 5)])
def test_enough_checkpoints_are_kept_for_the_best_to_survive(keep, patience, expected):
    # the best epoch is at most `patience` epochs before the last, or training would have stopped
    assert checkpoints_kept(TrainConfig(keep_checkpoints=keep, patience=patience)) == expected


def test_a_checkpoint_a_killed_process_left_half_written_is_not_resumed_from(tmp_path):
    from recsys.training.module import KeepCheckpoints

    for epoch, complete in ((0, True), (1, False)):  # killed while saving epoch 1: no metrics written yet
        folder = tmp_path / f"{KeepCheckpoints.PREFIX}{epoch:03d}"
        (folder / "checkpoint.ckpt").mkdir(parents=True)
        if complete:
            (folder / KeepCheckpoints.METRICS).write_text('{"epoch": 0, "val/auc": 0.7}')
    assert KeepCheckpoints.saved(tmp_path) == [tmp_path / f"{KeepCheckpoints.PREFIX}000" / "checkpoint.ckpt"]
    assert KeepCheckpoints.reported(tmp_path)[0][1] == {"epoch": 0, "val/auc": 0.7}
