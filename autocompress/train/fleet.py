"""TrainConfig.use_fleet: collective training under `paddle.distributed.launch` (or a PaddleJob).

We never start workers ourselves (DESIGN §7): the launcher sets PADDLE_TRAINERS_NUM and friends,
each process runs the same stage, fleet wraps the optimizer with a DistributedStrategy carrying
the spec's amp/recompute/sharding configs, and each rank trains on every world_size-th batch.
A single process (no launcher) trains without fleet and logs that it did.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path


log = logging.getLogger("autocompress.train")


@dataclasses.dataclass
class Parallel:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, batch_index: int) -> bool:
        return batch_index % self.world_size == self.rank


def process_rank() -> int:
    """This process's rank under paddle.distributed.launch / a PaddleJob (0 when not launched)."""
    return int(os.environ.get("PADDLE_TRAINER_ID", "0") or 0)


def rank_private(path) -> Path:
    """Rank 0 writes the deliverable where asked; other ranks write theirs to a private sibling
    (`.rank<k>/`), so ranks sharing one save dir never race on the same rename. Checkpoints stay
    shared: rank 0 writes them and every rank resumes from them."""
    path, rank = Path(path), process_rank()
    return path if rank == 0 else path.parent / f".rank{rank}" / path.name


def launched_world_size() -> int:
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1)


def setup(tc) -> Parallel:
    """recompute/sharding without use_fleet never get here: TrainConfig rejects them."""
    if not tc.use_fleet:
        return Parallel()
    world = launched_world_size()
    if world <= 1:
        log.warning("use_fleet=True but this is a single process (not started by paddle.distributed.launch "
                    "or a PaddleJob): training without fleet%s.",
                    "; recompute_config/sharding_config are ignored" if (tc.recompute_config or tc.sharding_config)
                    else "")
        return Parallel()
    from paddle.distributed import fleet

    fleet.init(is_collective=True)
    return Parallel(True, fleet.worker_index(), fleet.worker_num())


def wrap_optimizer(optimizer, tc, parallel: Parallel):
    """Under fleet, AMP/recompute/sharding come from the strategy, not from static AMP."""
    from paddle.distributed import fleet

    strategy = fleet.DistributedStrategy()
    if tc.amp_config:
        strategy.amp = True
        strategy.amp_configs = dict(tc.amp_config)
    if tc.recompute_config:
        strategy.recompute = True
        strategy.recompute_configs = dict(tc.recompute_config)
    if tc.sharding_config:
        strategy.sharding = True
        strategy.sharding_configs = dict(tc.sharding_config)
    return fleet.distributed_optimizer(optimizer, strategy)
