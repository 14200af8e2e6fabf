"""TrainConfig.use_fleet: collective training under `paddle.distributed.launch` (or a PaddleJob).

We never start workers ourselves (DESIGN §7): the launcher sets PADDLE_TRAINERS_NUM and friends,
each process runs the same stage, fleet wraps the optimizer with a DistributedStrategy carrying
the spec's amp/recompute/sharding configs, and each rank trains on every world_size-th batch.
A process no launcher started cannot honour use_fleet (nor recompute/sharding, which PaddleSlim
only applies through fleet): that is a ConfigError saying how to launch, never a silent fallback.
After minimize, every requested strategy must be among the meta optimizers fleet applied (Paddle
skips e.g. recompute without checkpoints, or sharding on one rank): otherwise a ConfigError too.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from ..errors import ConfigError

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


def launched() -> bool:
    """Started by paddle.distributed.launch (a PaddleJob runs it too), which sets PADDLE_TRAINERS_NUM."""
    return "PADDLE_TRAINERS_NUM" in os.environ


# TrainConfig key -> DistributedStrategy attribute, and the fleet meta optimizer that applies it
STRATEGIES = {"amp_config": ("amp", "AMPOptimizer"), "recompute_config": ("recompute", "RecomputeOptimizer"),
              "sharding_config": ("sharding", "ShardingOptimizer")}


def setup(tc) -> Parallel:
    """recompute/sharding without use_fleet never get here: TrainConfig rejects them."""
    if not tc.use_fleet:
        return Parallel()
    if not launched():
        raise ConfigError(
            "TrainConfig.use_fleet: true trains with paddle's fleet API across the processes that "
            "`python -m paddle.distributed.launch` (or a PaddleJob) starts, but this process was not started by a "
            "launcher (PADDLE_TRAINERS_NUM is not set). Run it as `python -m paddle.distributed.launch "
            "--devices 0,1 <your script>`, or remove use_fleet (and recompute_config / sharding_config) to train "
            "in this single process.")
    world = launched_world_size()
    if tc.sharding_config and world < 2:
        raise ConfigError(f"TrainConfig.sharding_config splits the optimizer state across ranks, but this job has "
                          f"{world} rank; launch at least 2 processes (paddle.distributed.launch --devices 0,1) or "
                          "remove sharding_config")
    from paddle.distributed import fleet

    fleet.init(is_collective=True)
    return Parallel(True, fleet.worker_index(), fleet.worker_num())


def wrap_optimizer(optimizer, tc, parallel: Parallel, program=None):
    """Under fleet, AMP/recompute/sharding come from the strategy, not from static AMP."""
    from paddle.distributed import fleet

    strategy = fleet.DistributedStrategy()
    for key, (attr, _) in STRATEGIES.items():
        configs = getattr(tc, key)
        if not configs:
            continue
        setattr(strategy, attr, True)
        try:
            setattr(strategy, f"{attr}_configs", dict(configs))
        except (AssertionError, TypeError, ValueError) as err:
            allowed = sorted(getattr(strategy.strategy, f"{attr}_configs").DESCRIPTOR.fields_by_name)
            raise ConfigError(f"TrainConfig.{key} (fleet DistributedStrategy.{attr}_configs): {err}; "
                              f"allowed keys: {allowed}") from None
    if tc.recompute_config:
        _check_recompute(tc.recompute_config, program)
    return fleet.distributed_optimizer(optimizer, strategy)


def _check_recompute(configs: dict, program) -> None:
    names = configs.get("checkpoints") or []
    if not names:
        raise ConfigError("TrainConfig.recompute_config needs checkpoints: a non-empty list of the var names whose "
                          "activations are kept (the others are recomputed in the backward pass); without them "
                          "fleet would not recompute anything. List them with autocompress.train.list_nodes.")
    if program is not None:
        missing = [n for n in names if not program.global_block().has_var(n)]
        if missing:
            raise ConfigError(f"TrainConfig.recompute_config.checkpoints {missing} are not vars of the training "
                              "program; list valid names with autocompress.train.list_nodes(model_files)")


def check_applied(tc, parallel: Parallel) -> None:
    """After minimize: every configured strategy must have been applied by fleet."""
    if not parallel.enabled:
        return
    from paddle.distributed import fleet

    applied = list(fleet._get_applied_meta_list()) + list(fleet._get_applied_graph_list())
    log.info("fleet: rank %d of %d; applied %s", parallel.rank, parallel.world_size, applied)
    for key, (attr, meta) in STRATEGIES.items():
        if getattr(tc, key) and meta not in applied:
            raise ConfigError(f"TrainConfig.{key}: paddle's fleet did not apply {attr} (applied: {applied}) with "
                              f"this configuration on {parallel.world_size} rank(s); fix {key} or remove it")
