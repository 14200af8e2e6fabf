"""Pruning engines: structured channel pruning, ASP 2:4 and unstructured (GMP) sparsity.

Everything works on legacy `.pdmodel` programs inside `paddle_env.legacy_ir()`; inputs are never
modified (each function loads its own copy) and outputs are written atomically.
"""
from .channel import prune_model, prune_loaded
from .graph import analyze

__all__ = ["analyze", "prune_model", "prune_loaded"]
