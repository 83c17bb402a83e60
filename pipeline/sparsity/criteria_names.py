"""The pruning criteria by name, without torch: ticket configs validate `pruner` here, so `pipeline validate`
need not import the score functions (`pipeline.sparsity.criteria`, which may register more)."""
from __future__ import annotations

import sys

# name -> nni pruner class that computes masks from the weights alone
PRUNERS = {"level": "LevelPruner", "l1": "L1NormPruner", "l2": "L2NormPruner", "fpgm": "FPGMPruner"}
# name -> why it cannot run here: these need an nni Evaluator that trains on data
NEEDS_TRAINING = {
    "slim": "SlimPruner learns BN scaling factors during training",
    "movement": "MovementPruner learns scores during fine-tuning",
    "linear": "LinearPruner schedules another pruner over training steps",
    "agp": "AGPPruner schedules another pruner over training steps",
}
# name -> nni pruner name (None: a global criterion), as `pipeline.sparsity.criteria` registers them: its
# global score functions in order, then the nni pruners sorted (a test holds the two equal)
BUILTIN: dict[str, str | None] = {**{n: None for n in ("global_magnitude", "random", "taylor")},
                                  **{n: n for n in sorted(PRUNERS)}}


def criteria() -> dict[str, str | None]:
    """Name -> nni pruner name (None: a global criterion): the registry's when the score functions are
    loaded (they may have registered more), else the built-in ones."""
    registry = sys.modules.get("pipeline.sparsity.criteria")
    if registry is not None:
        return {n: c.nni_pruner for n, c in registry.CRITERIA.items()}
    return dict(BUILTIN)


def unknown_criterion(name: str, valid: list[str]) -> ValueError:
    """The error for a pruner that is not registered, listing the valid names."""
    if name in NEEDS_TRAINING:
        return ValueError(f"{name!r} is not supported here: {NEEDS_TRAINING[name]}; use one of {', '.join(valid)}")
    return ValueError(f"unknown pruner {name!r}; valid: {', '.join(valid)}")


def check_criterion(name: str) -> str:
    if name not in criteria():
        raise unknown_criterion(name, list(criteria()))
    return name
