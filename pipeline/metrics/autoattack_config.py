"""The AutoAttack evaluation attack's config and backend lookup, without torch: the evaluate stage's
config validates from here, `pipeline.metrics.autoattack` runs it."""
from __future__ import annotations

import importlib
from typing import Literal

from pydantic import Field

from pipeline.engine.schema import Ratio, StrictModel

INSTALL_HINT = ("pip install git+https://github.com/fra31/auto-attack  "
                "(or, from PyPI, the unofficial repackaging: pip install pyautoattack==0.2.0)")
BACKENDS = {"autoattack": "autoattack", "pyautoattack": "pyautoattack"}  # backend -> import name
Split = Literal["train", "val", "test"]


class AutoAttackConfig(StrictModel):
    """One AutoAttack evaluation; `version: standard` = APGD-CE, APGD-T, FAB-T, Square."""

    kind: Literal["autoattack"] = "autoattack"
    name: str | None = Field(default=None, description="label of this figure in metrics['ra'] (default autoattack_<version>)")
    version: Literal["standard", "plus", "rand"] = "standard"
    norm: Literal["Linf", "L2", "L1"] = "Linf"
    eps: Ratio = Field(default=8 / 255, gt=0)
    n: int | None = Field(default=10000, gt=0, description="first n images of each split (RobustBench's default "
                          "10000, the whole CIFAR test set; null: the whole split)")
    splits: list[Split] = Field(default_factory=lambda: ["test"], min_length=1)
    backend: Literal["auto", "autoattack", "pyautoattack"] = Field(
        default="auto", description="auto: the git package `autoattack` if installed, else `pyautoattack`")
    on_missing: Literal["error", "skip"] = Field(default="error", description="when no AutoAttack is installed")
    batch_size: int | None = Field(default=None, gt=0, description="default: the stage's batch_size")

    def label(self) -> str:
        if self.name:
            return self.name
        eps = "" if abs(self.eps - 8 / 255) < 1e-12 or self.norm != "Linf" else f"_eps{self.eps * 255:g}"
        return f"autoattack_{self.version}{'' if self.norm == 'Linf' else '_' + self.norm}{eps}"


def find_autoattack(backend: str = "auto") -> tuple[type, str] | None:
    """(AutoAttack class, backend name) of the first installed backend, or None."""
    names = ["autoattack", "pyautoattack"] if backend == "auto" else [backend]
    for name in names:
        try:
            module = importlib.import_module(BACKENDS[name])
        except ImportError:
            continue
        cls = getattr(module, "AutoAttack", None)
        if cls is not None:
            return cls, name
    return None


def missing_message(cfg: AutoAttackConfig) -> str:
    wanted = "AutoAttack" if cfg.backend == "auto" else f"AutoAttack backend {cfg.backend!r}"
    return (f"attack {cfg.label()!r}: {wanted} is not installed. Install it with: {INSTALL_HINT}; "
            "or set `on_missing: skip` on this attack to leave the figure out")
