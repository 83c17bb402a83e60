"""What the training loop does differently under several processes (torchrun): DDP, shards, global BN.

`DistributedTraining(...)` is a no-op in a single process (`forward_model` is the model, the attack
is the attack, weights are 1), so the single-process loop is untouched. With several ranks:

- each optimizer step is one global batch of `batch_size` images (the single-process batch of the
  (seed, epoch) order); rank r trains on its contiguous share, and a DDP communication hook weighs
  each rank's gradient by its share so the all-reduced gradient is the mean over the global batch even
  when the last batch does not split evenly;
- the training attack runs on the unwrapped module (no gradient all-reduce inside PGD steps), and its
  random start skips the draws of the lower ranks' images, so on CPU every image gets the start the
  single-process run gives it (CUDA's Philox generator does not advance that way: a distinct start);
- BatchNorm layers normalise over the global batch (`run.distributed.batch_norm: global`, the
  single-process semantics; statistics all-reduced, gradients through them) or per rank (`local`, the
  torchvision DDP recipe; running statistics then follow rank 0's via DDP's buffer broadcast).
"""
from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
from torch import nn

from pipeline.engine import distributed


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward sums the incoming gradients over ranks too."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_sum(t.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_sum(grad.clone())


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch summed over all ranks.

    Two passes like a single-process BN (mean first, then the squared deviations from it), each one
    differentiable all-reduce, so CPU (gloo) runs match a single process within float rounding.
    Parameters and buffers are those of nn.BatchNorm2d: the class is swapped in place and back.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed.active()):
            return super().forward(x)
        dtype = x.dtype
        x = x.float()  # bf16 sums over a global batch would lose the statistics' precision
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        totals = _SumOverRanks.apply(torch.cat([x.sum(dims), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean[None, :, None, None]
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (n / (n - 1)), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(dtype)


class DistributedTraining:
    def __init__(self, model: nn.Module, device: torch.device, settings, *, batch_size: int, n_train: int,
                 drop_last: bool, where: str):
        self.on = distributed.active()
        self.model, self.batch_size, self.n_train = model, batch_size, n_train
        self.forward_model: nn.Module = model
        self.global_n = 0
        self._weight = 1.0
        self._swapped: list[nn.Module] = []
        if not self.on:
            return
        distributed.check_batch_size(batch_size, n_train, drop_last, where)
        global_bn = self._global_bn = settings.batch_norm == "global"
        if global_bn:
            for m in model.modules():
                if type(m) is nn.BatchNorm2d:
                    m.__class__ = GlobalBatchNorm2d
                    self._swapped.append(m)
        from torch.nn.parallel import DistributedDataParallel

        # global BN keeps the running statistics identical on every rank: no broadcast at each forward
        buffers = ({"forward_sync_buffers": not global_bn} if "forward_sync_buffers" in
                   inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": not global_bn})
        self.forward_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **buffers)
        self.forward_model.register_comm_hook(None, self._weighted_mean)

    def _weighted_mean(self, _state, bucket):
        buf = bucket.buffer()
        buf.mul_(self._weight / distributed.world_size())
        return dist.all_reduce(buf, async_op=True).get_future().then(lambda fut: fut.value()[0])

    def shard_spec(self) -> tuple[int, int] | None:
        return (distributed.rank(), distributed.world_size()) if self.on else None

    def begin_step(self, batch_index: int, local_n: int) -> int:
        """Note the step's global batch; returns its size (the images the step trains on, all ranks)."""
        if not self.on:
            self.global_n = local_n
            return local_n
        self.global_n = min(self.batch_size, self.n_train - batch_index * self.batch_size)
        self._weight = local_n * distributed.world_size() / self.global_n
        return self.global_n

    def attack(self, attack):
        """The training attack as the step calls it, run on the unwrapped module with this rank's starts."""
        if not self.on or attack is None:
            return attack
        module = self.model

        def sharded(_ddp_model, x, y, generator=None):
            start, _ = distributed.shard(self.global_n)
            if generator is not None and start:
                # advance past the lower ranks' images: the single-process draw, image by image (CPU)
                torch.empty(start * x[0].numel(), dtype=x.dtype, device=generator.device).uniform_(
                    -1.0, 1.0, generator=generator)
            return attack(module, x, y, generator)
        return sharded

    def record(self) -> dict:
        """stage.json "distributed": how the global batch was split (written only for several ranks)."""
        w = distributed.world_size()
        return {"world_size": w, "global_batch_size": self.batch_size, "per_rank_batch_size": self.batch_size // w,
                "backend": dist.get_backend(), "batch_norm": "global" if self._global_bn else "local"}

    def close(self) -> None:
        for m in self._swapped:
            m.__class__ = nn.BatchNorm2d
        self._swapped = []
        self.forward_model = self.model
