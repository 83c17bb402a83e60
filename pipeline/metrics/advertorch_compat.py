"""The one place that patches third-party packages so they import on current torch.

advertorch 0.2.3 (its only release) imports `zero_gradients` from `torch.autograd.gradcheck`,
which torch removed in 1.9. We put an equivalent function back on that module before the first
advertorch import. Everything in the project imports advertorch through `import_advertorch()`.
"""
from __future__ import annotations

import importlib
import sys


def _zero_gradients(x):
    # Same semantics as the removed torch helper: zero .grad of a tensor or of each tensor in an iterable.
    import torch

    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    else:
        for elem in x:
            _zero_gradients(elem)


def patch_torch_for_advertorch() -> None:
    import torch.autograd.gradcheck  # noqa: F401  (loads the module into sys.modules)

    module = sys.modules["torch.autograd.gradcheck"]
    if not hasattr(module, "zero_gradients"):
        module.zero_gradients = _zero_gradients


def import_advertorch():
    """Return the `advertorch` package, importable on torch >= 1.9."""
    patch_torch_for_advertorch()
    return importlib.import_module("advertorch")
