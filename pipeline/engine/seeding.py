"""The project's one seed derivation, its named random streams, and exact RNG capture/restore for resume.

Randomness derives from (run seed, stream tag, step, ...) wherever it can, so a resumed run redraws the
same numbers without saved generator internals (data order, augmentation, DST growth, random masks).
Where a global generator must survive a resume (the training loop's torch/numpy/python state), it is
captured and restored exactly. The stream tags are named here, once: changing one changes every result
that draws from it, so they are frozen values, not tunables.
"""
from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


class Stream:
    """Tags that keep the run seed's independent uses apart (values frozen: results depend on them)."""

    DATA_ORDER = "order"
    AUGMENT = "augment"
    DST_INIT = "dst-init"
    DST_GROW = "dst-grow"
    EARLY_BIRD_RANDOM = 0x5EED        # random criterion of an early-bird mask draw
    IMP_RANDOM_MASK = 0x52414E44      # imp's random-pruning baseline
    TRANSFER_HEAD = 0x4EAD            # initialisation of a transfer's new classifier head
    EVAL_ATTACK_EPOCH = 1000003       # per-epoch evaluation attack start: seed * this + epoch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings, stable across processes and platforms."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def derived_generator(seed: int, *keys: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (seed, *keys), e.g. (seed, Stream.DST_GROW, step, layer_index)."""
    import torch

    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))


def eval_attack_seed(seed: int, epoch: int) -> int:
    """Seed of the random start of the attack that evaluates epoch `epoch` during training."""
    return seed * Stream.EVAL_ATTACK_EPOCH + epoch


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """Every global generator's state as plain tensors and numbers (loadable with weights_only=True)."""
    import torch

    np_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
