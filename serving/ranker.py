"""The ranker client: scores every candidate of a request in one gRPC call to Triton."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

NP_TO_TRITON = {"int64": "INT64", "float32": "FP32"}


@dataclass
class Ranking:
    """What ranking one request gave: the scores (None when it failed) and by which model, or why not."""

    variant: str
    scores: np.ndarray | None
    model: str = ""  # "model:version" that scored
    dataset: str = ""  # the dataset id whose features were the inputs
    note: str | None = None  # why there are no scores (or a remark on the ones there are)
    stale_features: bool = False  # the live store failed: the inputs were the dataset's snapshot
    inputs: dict[str, np.ndarray] | None = None  # what was scored, one row per candidate


def _channel_args() -> list[tuple[str, int]]:
    """tritonclient's channel options, and a channel that forgets a dead server quickly.

    gRPC shares a subchannel (a connection and its reconnect backoff) between the channels to one address: a new
    client, made after a failure, kept failing fast ("Connection refused") for the backoff's second or more after
    Triton was back. Here each channel has its own, and a refused connection is retried after 100 ms, not 1 s
    growing to 2 minutes (Triton is on loopback: a retry costs nothing)."""
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000)]


class TritonRanker:
    """An asyncio gRPC client of Triton's ranking model; reconnects after a failure."""

    def __init__(self, url: str, model: str, version: str = "", timeout_s: float = 0.2):
        self.url, self.model, self.version, self.timeout_s = url, model, version, timeout_s
        self._client = None

    def _connect(self):
        import tritonclient.grpc.aio as grpcclient

        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.url, channel_args=_channel_args())
        return self._client

    def _drop(self) -> None:
        """The next call makes a new client. The old one is not closed here: closing a gRPC channel cancels the
        calls other requests still have in flight on it (they raised CancelledError: a 500); it closes itself
        once the last of them is done and nothing holds it."""
        self._client = None

    async def rank(self, inputs: dict[str, np.ndarray], version: str | None = None) -> tuple[np.ndarray, str]:
        """Scores ``(n,)`` for one request's candidates, and the model version that gave them (``version``:
        a Triton version of the model; None: the client's default)."""
        import tritonclient.grpc.aio as grpcclient

        tensors = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), NP_TO_TRITON[str(array.dtype)])
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        try:
            result = await self._connect().infer(self.model, tensors,
                                                 model_version=self.version if version is None else version,
                                                 client_timeout=self.timeout_s)
        except Exception:
            self._drop()
            raise
        response = result.get_response()
        output = response.outputs[0].name
        return result.as_numpy(output).reshape(-1), f"{self.model}:{response.model_version}"

    async def rank_within_deadline(self, inputs: dict[str, np.ndarray], version: str | None,
                                   deadline_s: float) -> Ranking:
        """`rank`, or why it gave nothing within ``deadline_s`` (never raises)."""
        try:
            scores, model = await asyncio.wait_for(self.rank(inputs, version), deadline_s)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # this request is being cancelled: let it be
                raise
            return Ranking("", None, note="ranker unavailable (its gRPC call was cancelled)")
        except Exception as exc:
            why = ("ranker slower than the deadline" if isinstance(exc, TimeoutError)
                   else f"ranker unavailable ({type(exc).__name__}: {str(exc)[:300]})")
            return Ranking("", None, note=why)
        return Ranking("", scores, model=model)

    async def ready(self, timeout_s: float, versions: list[str] | None = None) -> bool:
        """The server is ready and so is every one of ``versions`` of the model (the client's default version
        when none are named)."""
        try:
            client = self._connect()
            if not await client.is_server_ready(client_timeout=timeout_s):
                return False
            for version in versions or [self.version]:
                if not await client.is_model_ready(self.model, version, client_timeout=timeout_s):
                    return False
            return True
        except Exception:  # not ready, whatever the reason
            self._drop()
            return False

    async def input_names(self, timeout_s: float) -> list[str]:
        meta = await self._connect().get_model_metadata(self.model, self.version, as_json=True,
                                                        client_timeout=timeout_s)
        return [i["name"] for i in meta["inputs"]]
