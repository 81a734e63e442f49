"""How a run computes: its thread count, CPU kernels, memory format, mixed precision and the
encoding shortcuts, chosen once per run and kept in the record (`record["numerics"]`).

Two paths, chosen by `BENCH_FAST` (default 1) or by whoever builds a `Numerics`:

- **fast** (issue 15). On CPU: oneDNN kernels at a *fixed* thread count (1 per run unless
  `--threads` says otherwise; a sweep gets its speed from running runs side by side), so a
  spec and seed give the same bits whatever `--jobs` is; channels_last tensors (what
  oneDNN's convolutions are fastest with); training images normalised to float32 once
  instead of per batch; encoding in inference mode with each conv+BatchNorm pair folded into
  one conv. On CUDA additionally bf16 autocast for the network (the method's loss stays in
  float32) and non-blocking copies.
- **legacy** (`BENCH_FAST=0`): the loop as it was before, kept for `bench perf run`'s
  side-by-side comparison and to reproduce older records: PyTorch's native CPU kernels,
  torch's default threads (cores / jobs), per-batch normalisation, unfused encoding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.errors import UserError

FAST_ENV = "BENCH_FAST"
FIXED_THREADS = 1  # threads per run on the fast path: oneDNN's bits depend on this number
# Encoding batch on one CPU thread: measured on Fashion-MNIST (small_cnn, oneDNN, channels_last),
# best of 3: 128 -> 16.6k img/s, 256 -> 15.7k, 512 -> 15.3k, 1024 -> 12.9k, 2048 -> 14.1k; larger
# batches spill the activations out of the caches.
ENCODE_BATCH_CPU = 128


def fast_by_default() -> bool:
    """The path `BENCH_FAST` selects: 1 (default) fast, 0 legacy."""
    value = os.environ.get(FAST_ENV, "1").strip().lower()
    if value in ("1", "true", "yes", "on", ""):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise UserError(f"{FAST_ENV}={value!r} is not valid; use 1 (fast path, default) or 0 (legacy path)")


def pick_device(requested: str | None) -> torch.device:
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: CUDA is not available on this machine; use cpu")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise UserError(f"--device {requested!r} is not a valid device (cpu, cuda, cuda:N)") from None


@dataclass(frozen=True)
class Numerics:
    """Everything about a run's arithmetic that is not its configuration. Two runs of the same
    spec and seed with equal `Numerics` on the same kind of processor give the same bits."""

    path: str  # "fast" or "legacy"
    device: str
    threads: int
    onednn: bool
    channels_last: bool
    amp: str | None  # "bf16" (CUDA autocast) or None
    cached_images: bool  # in-memory training/validation images normalised once, not per batch
    fuse_bn: bool  # encode through a copy with each conv+BN folded into one conv
    inference_mode: bool  # torch.inference_mode (else no_grad) while encoding
    encode_batch: int
    non_blocking: bool

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, None: None}[self.amp]

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when `amp` says so; otherwise nothing (CPU runs stay float32)."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=self.amp_dtype)

    def grad_off(self) -> contextlib.AbstractContextManager:
        return torch.inference_mode() if self.inference_mode else torch.no_grad()

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """An image batch in the memory format the run's network uses."""
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def module(self, module: torch.nn.Module) -> torch.nn.Module:
        """A module in the run's memory format (in place, as `Module.to` is)."""
        return module.to(memory_format=torch.channels_last) if self.channels_last else module


def resolve(device: torch.device | str, threads: int | None = None, onednn: bool = False,
            fast: bool | None = None, **levers: Any) -> Numerics:
    """The numerics of one run. `threads`: an explicit --threads (else the path's rule);
    `onednn`: --onednn, which only changes the legacy path (the fast path always uses oneDNN
    where torch has it); `levers`: field overrides, for `bench perf run`'s lever table."""
    device = torch.device(device)
    fast = fast_by_default() if fast is None else fast
    cuda = device.type == "cuda"
    if fast:
        numerics = Numerics(
            path="fast", device=str(device), threads=threads or FIXED_THREADS,
            onednn=bool(torch.backends.mkldnn.is_available()), channels_last=True,
            amp="bf16" if cuda and _bf16_supported() else None, cached_images=True, fuse_bn=True,
            inference_mode=True, encode_batch=1024 if cuda else ENCODE_BATCH_CPU, non_blocking=cuda,
        )
    else:
        numerics = Numerics(
            path="legacy", device=str(device), threads=threads or torch.get_num_threads(),
            onednn=bool(onednn), channels_last=False, amp=None, cached_images=False, fuse_bn=False,
            inference_mode=False, encode_batch=512, non_blocking=cuda,
        )
    unknown = sorted(set(levers) - {f.name for f in dataclasses.fields(Numerics)})
    if unknown:
        raise UserError(f"unknown numerics lever '{unknown[0]}'; valid: "
                        f"{', '.join(f.name for f in dataclasses.fields(Numerics))}")
    return dataclasses.replace(numerics, **levers)


def _bf16_supported() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported())
    except (RuntimeError, AssertionError):
        return False


@contextlib.contextmanager
def applied(numerics: Numerics) -> Iterator[None]:
    """The run's torch thread count and CPU kernels, restored afterwards (a sequential sweep
    and `bench perf run` train several runs in one process).

    oneDNN's convolutions split their reductions by thread count, so its numbers differ
    between 1 and 2 threads; at a fixed count they are the same bit for bit in any process
    (tests/test_determinism.py), which is why the fast path fixes the count, not the kernels."""
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(numerics.threads)
    torch.backends.mkldnn.enabled = numerics.onednn
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn


def fused_for_inference(module: torch.nn.Module, numerics: Numerics) -> torch.nn.Module:
    """An eval-mode copy of `module` with every conv followed by BatchNorm folded into one
    conv (torch.fx), for encoding: one pass over the activations instead of two. A module
    torch.fx cannot trace is returned as it is (in eval mode)."""
    module.eval()
    if not numerics.fuse_bn or not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                       for m in module.modules()):
        return module
    from torch.fx.experimental.optimization import fuse

    try:
        fused = fuse(module, inplace=False)
    except Exception:  # untraceable control flow: encode unfused
        return module
    return numerics.module(fused)


class ImageCache:
    """Images of an in-memory source, normalised to float32 once (on the run's device), for
    the items a run reads many times (training, validation). Only for sources whose `batch`
    is the plain gather + normalise of `TensorSource` (no augmentation), so the cached
    values are exactly what `batch` would return."""

    def __init__(self, source: Any, indices: np.ndarray, device: torch.device,
                 numerics: Numerics) -> None:
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        self.rows = np.full(len(source), -1, dtype=np.int64)
        self.rows[indices] = np.arange(len(indices))
        images = source.batch(indices, False)
        self.images = numerics.images(images).to(device)

    @staticmethod
    def usable(source: Any) -> bool:
        from bench.data.loading import TensorSource

        return isinstance(source, TensorSource) and type(source).batch is TensorSource.batch

    def take(self, indices: np.ndarray) -> torch.Tensor | None:
        """The cached images of `indices`, or None if any is not cached."""
        rows = self.rows[indices]
        if rows.size and rows.min() < 0:
            return None
        return self.images[torch.from_numpy(rows).to(self.images.device)]
