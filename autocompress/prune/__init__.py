"""Pruning engines: structured channel pruning, ASP 2:4 and unstructured (GMP) sparsity.

- `channel.prune_model(files, PruneConfig, out_dir)`: physically remove channels (graph.py decides
  which tensors shrink together); `asp.asp_model` / `unstructured.sparsify_model`: one-shot masks.
- `run.run_prune_distill` / `run.run_sparse_distill`: the spec's combinations 3 and 4 (prune or
  mask, then distillation with the masks re-applied after every optimizer step).

Everything works on legacy `.pdmodel` programs inside `paddle_env.legacy_ir()`; inputs are never
modified (each function loads its own copy) and outputs are written atomically.
"""
from .asp import ASPPruner, asp_model
from .channel import prune_loaded, prune_model
from .graph import analyze
from .unstructured import UnstructuredPruner, sparsify_model

__all__ = ["analyze", "prune_model", "prune_loaded", "asp_model", "sparsify_model", "ASPPruner",
           "UnstructuredPruner", "run_prune_distill", "run_sparse_distill"]


def __getattr__(name):
    # run.py imports the training engine; load it only when asked for
    if name in ("run_prune_distill", "run_sparse_distill"):
        from . import run

        return getattr(run, name)
    raise AttributeError(name)
