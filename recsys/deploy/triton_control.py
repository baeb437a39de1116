"""Moving a live Triton (explicit model control) to a rollout state, without dropping a request.

Which versions Triton serves lives in one place: the model's config files in the repository. `sync` writes the
versions into both configs as a ``specific`` version policy (`repository.pin_versions`) and has Triton load the
model from its files, so a restart of Triton — ours or anyone's — serves exactly what the last rollout named.
`apply` moves serving to a state: the new versions are loaded beside the old ones first, the state is written
(compare-and-swap on the revision it was based on, `rollout.write`), the replicas switch within their poll
interval, and only then, after ``grace_s``, are versions no longer named unloaded. Applies to one state file
are serialised by a lock of their own (`rollout.locked` with ``.apply``), which the replicas never take: the
file's own lock is held only while it is written.

`missing_versions` tells a readiness check which of a state's versions a server does not have READY.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from recsys.deploy import rollout
from recsys.deploy.rollout import RolloutConflict, RolloutState
from recsys.errors import RecsysError

APPLY_LOCK = ".apply"  # suffix of the lock file that serialises applies: <state>.lock.apply


def _numbers(model: str, versions: Iterable[str | int]) -> list[str]:
    """Triton version numbers, as strings, unique and ascending."""
    bad = [v for v in versions if not str(v).isdigit()]
    if bad:
        raise RecsysError(f"model {model!r}: Triton versions must be numbers (version folders), got {bad}")
    return sorted({str(int(v)) for v in versions}, key=int)


def sync(info, model: str, versions: Iterable[str | int]) -> None:
    """Serve exactly ``versions`` of ``model`` on ``info``'s server, now and after any restart: pin them in the
    model's configs, then load the model from its files. Versions already loaded keep serving while others load.

    Args:
        info: the running server (`recsys.deploy.server.ServerInfo`); its repository holds the configs.
        model: the Triton model.
        versions: Triton version numbers, at least one.
    """
    from tritonclient.utils import InferenceServerException

    from recsys.deploy.repository import pin_versions
    from recsys.deploy.server import _client

    served = _numbers(model, versions)
    pin_versions(info.repository, model, served)
    client = _client(info)
    try:
        client.load_model(model)
    except InferenceServerException as exc:
        raise RecsysError(f"Triton could not load {model!r} versions {served} (pinned in "
                          f"{Path(info.repository) / model}): {exc.message()}") from exc
    finally:
        client.close()


def apply(path: str | Path, state: RolloutState, reason: str, *, expect_revision: int | None, info=None,
          grace_s: float = 3.0, event: dict[str, Any] | None = None) -> RolloutState:
    """Move serving to ``state``: load its versions beside the current ones, write the state, give the replicas
    ``grace_s`` to switch and their in-flight calls to finish, then unload what the state no longer names.

    Args:
        path: the rollout state file.
        state: what to serve.
        reason: why (recorded).
        expect_revision: the revision of the state file ``state`` was derived from (0 = none yet); None only for
            a state that was not derived from the file.
        info: the running Triton (`recsys.deploy.server.ServerInfo`); None writes the state only.
        grace_s: seconds between writing the state and unloading versions it no longer names.
        event: more fields for the events-log line.

    Returns:
        The state as written.

    Raises:
        RolloutConflict: the file was not at ``expect_revision`` (nothing was changed), or it moved on while the
            new versions loaded (the state file is unchanged; Triton is put back to what it served before, plus
            what the file names now).
    """
    if info is not None and not state.versions:
        raise RecsysError(f"rollout: the state names no Triton version of {state.model!r} to serve (production "
                          "is ''); name the production version")
    with rollout.locked(path, APPLY_LOCK):
        current = rollout.read(path)
        found = current.revision if current else 0
        if expect_revision is not None and found != expect_revision:
            raise RolloutConflict(path, expect_revision, found)
        before = current.versions if current and current.model == state.model else []
        if info is not None:
            sync(info, state.model, [*state.versions, *before])
        try:
            new = rollout.write(path, state, reason, expect_revision=found, event=event)
        except RolloutConflict:  # a replica rolled back meanwhile
            now = rollout.read(path)
            if info is not None:
                sync(info, state.model, [*before, *(now.versions if now and now.model == state.model else [])]
                     or state.versions)
            raise
        if info is not None and set(before) - set(new.versions):
            time.sleep(grace_s)
            # a replica may have rolled the candidate back meanwhile: serve what the file names now
            latest = rollout.read(path)
            named = latest.versions if latest is not None and latest.model == new.model else []
            sync(info, new.model, named or new.versions)
    return new


async def missing_versions(model: str, versions: Iterable[str],
                           is_model_ready: Callable[[str, str], Awaitable[bool]]) -> list[str]:
    """The versions of ``model`` among ``versions`` that a server does not have READY, in the order given.

    Args:
        model: the Triton model (``RolloutState.model``).
        versions: the Triton versions a state ranks with (``RolloutState.versions``).
        is_model_ready: ``(name, version) -> awaitable bool``, e.g. ``tritonclient.grpc.aio``'s
            ``InferenceServerClient.is_model_ready``. Its errors (an unreachable server) propagate.

    Returns:
        The versions not READY; empty when the server serves all of them.
    """
    return [v for v in versions if not await is_model_ready(model, v)]
