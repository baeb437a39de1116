"""The frameworks' notes that tell a recsys user nothing, kept out of the terminal and the run's logs.

``quiet()`` is called where they would print: in a training run's process and by the exporter.
"""

from __future__ import annotations

import logging


def _not_an_fbgemm_kernel_call(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("[TBE=")


def quiet() -> None:
    root = logging.getLogger()
    if _not_an_fbgemm_kernel_call not in root.filters:  # FBGEMM logs each embedding kernel's arguments at INFO
        root.addFilter(_not_an_fbgemm_kernel_call)
    # torch's one-time note, when TorchRec's modules ask is_fx_tracing(), that the call now means two things
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
