"""A Lightning strategy for Ray Train that shards embedding tables with TorchRec instead of DDP.

`RayDDPStrategy` wraps the whole LightningModule in DistributedDataParallel, which cannot hold
TorchRec's sharded tables. `TorchRecStrategy` keeps the LightningModule unwrapped and wraps the model
inside it in `DistributedModelParallel`: TorchRec's planner decides how each table is sharded
(table-wise, column-wise, row-wise, data-parallel …) for the workers at hand, embeddings train with the
fused optimiser, and DMP keeps the dense layers data-parallel. It subclasses `RayDDPStrategy` because
`ray.train.lightning.prepare_trainer` accepts only Ray's strategy classes.
"""

from __future__ import annotations

import logging

import torch
from ray.train.lightning import RayDDPStrategy
from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology

log = logging.getLogger(__name__)


class TorchRecStrategy(RayDDPStrategy):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sharding: dict[str, str] = {}  # table -> sharding type, once set up

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
