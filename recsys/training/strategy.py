"""A Lightning strategy for Ray Train that shards embedding tables with TorchRec instead of DDP.

`RayDDPStrategy` wraps the whole LightningModule in DistributedDataParallel, which cannot hold
TorchRec's sharded tables. `TorchRecStrategy` keeps the LightningModule unwrapped and wraps the model
inside it in `DistributedModelParallel`: TorchRec's planner decides how each table is sharded
(table-wise, column-wise, row-wise, data-parallel …) for the workers at hand, embeddings train with the
fused optimiser, and DMP keeps the dense layers data-parallel. It subclasses `RayDDPStrategy` because
`ray.train.lightning.prepare_trainer` accepts only Ray's strategy classes.

Checkpoints are sharded too (`recsys.training.checkpoint`): every worker writes its own shards of
the tables and optimiser state with `torch.distributed.checkpoint`, and a resume loads them in place
once the model is sharded again, so the stock rank-0-only save (which would silently lose the other
workers' shards) is replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from lightning_fabric.plugins.environments import LightningEnvironment
from ray.train.lightning import RayDDPStrategy
from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology

from recsys.training import checkpoint as ckpt

log = logging.getLogger(__name__)


class OneProcess(LightningEnvironment):
    """The cluster environment of an in-process run (Ray Train's local mode): one process, rank 0, launched by
    nobody else (Ray's own environment asks Ray Train's context, which a Tune trial does not allow)."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    def world_size(self) -> int:
        return 1

    def global_rank(self) -> int:
        return 0


class TorchRecStrategy(RayDDPStrategy):
    def __init__(self, *args, device: torch.device | None = None, **kwargs):
        """``device``: the device of an in-process run (else Ray Train's worker says)."""
        super().__init__(*args, **kwargs)
        self.sharding: dict[str, str] = {}  # table -> sharding type, once set up
        self._device = device

    @property
    def root_device(self) -> torch.device:
        return self._device if self._device is not None else super().root_device

    @property
    def dmp(self) -> DistributedModelParallel:
        return self.lightning_module.train_wrapper.model

    def configure_ddp(self) -> None:
        wrapper = self.lightning_module.train_wrapper
        sharders = get_default_sharders()
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=self.world_size,
                                                             compute_device=self.root_device.type))
        plan = planner.collective_plan(wrapper.model, sharders, torch.distributed.group.WORLD)
        wrapper.model = DistributedModelParallel(wrapper.model, device=self.root_device, plan=plan,
                                                 sharders=sharders)
        self.sharding = {f"{module}.{table}" if module else table: option.sharding_type
                         for module, tables in plan.plan.items() for table, option in tables.items()}
        for table, kind in sorted(self.sharding.items()):
            log.info("embedding table %s: %s sharding", table, kind)

    # -- checkpoints: every rank writes and reads its own shards ------------------------------------

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        ckpt.save(checkpoint, filepath, self.optimizers, self.dmp.fused_optimizer, self.is_global_zero)

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True  # the model must be sharded and the optimisers built before shards load into them

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        return ckpt.load_in_place(checkpoint_path, self.lightning_module, self.optimizers, self.dmp.fused_optimizer)

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        pass  # `load_checkpoint` loaded the weights in place, shard by shard

    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        pass  # likewise the optimiser states
