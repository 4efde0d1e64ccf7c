"""What a run costs, measured: parameters, peak memory, throughput and time.

The record (`cost` in metrics.json and run.json):

- trainable_params, total_params: parameters that learn, and all the model holds (CLIP plus what
  the method adds: LoRA adapters, a CLIP-Adapter, CoOp's context, a probe's weights);
- peak_memory_bytes and peak_memory_kind: on CUDA `torch.cuda.max_memory_allocated` over the
  training (reset at its start: tensors only, not the CUDA context or the allocator's cache); on
  the CPU the process's peak resident set size (`getrusage` ru_maxrss), labelled "cpu peak RSS":
  it covers the whole process up to then (the loaded data included), an upper bound;
- train_seconds, train_images (images seen, repeats counted), train_images_per_second;
- device_seconds_per_1k_images: train_seconds x devices / train_images x 1000, the figure that
  compares runs on different hardware budgets;
- flops_per_image: the backbone's counted FLOPs for one image at the run's input size, forward and
  forward+backward, vision tower and (one prompt) text tower (`clip.flops`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

COST_KEY = "cost"
FIELDS = ("trainable_params", "total_params", "peak_memory_bytes", "peak_memory_kind", "train_seconds",
          "train_images", "train_images_per_second", "device_seconds_per_1k_images", "device", "n_devices")
CUDA_PEAK = "cuda max_memory_allocated"
CPU_PEAK = "cpu peak RSS"


def count_parameters(params: Iterable[Any]) -> int:
    """Elements of distinct parameters (a shared one counted once)."""
    seen: dict[int, int] = {}
    for p in params:
        seen.setdefault(id(p), int(p.numel()))
    return sum(seen.values())


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports kB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _is_cuda(device: Any) -> bool:
    return str(getattr(device, "type", device) or "cpu").startswith("cuda")


@dataclass
class CostMeter:
    """Started before training, finished after it: `record(...)` is the cost dict."""

    device: Any = "cpu"
    n_devices: int = 1
    t0: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if _is_cuda(self.device):
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()

    def peak(self) -> tuple[int, str]:
        if _is_cuda(self.device):
            import torch

            return int(torch.cuda.max_memory_allocated(self.device)), CUDA_PEAK
        return peak_rss_bytes(), CPU_PEAK

    def record(self, *, trainable_params: int, total_params: int, train_images: int,
               train_seconds: float | None = None) -> dict[str, Any]:
        """The cost fields; train_seconds defaults to the time since the meter started."""
        if _is_cuda(self.device):
            import torch

            torch.cuda.synchronize(self.device)
        seconds = float(train_seconds if train_seconds is not None else time.perf_counter() - self.t0)
        peak, kind = self.peak()
        return cost_record(trainable_params=trainable_params, total_params=total_params, peak_memory_bytes=peak,
                           peak_memory_kind=kind, train_seconds=seconds, train_images=train_images,
                           device="cuda" if _is_cuda(self.device) else "cpu", n_devices=self.n_devices)


def cost_record(*, trainable_params: int, total_params: int, peak_memory_bytes: int | None, peak_memory_kind: str,
                train_seconds: float, train_images: int, device: str, n_devices: int = 1) -> dict[str, Any]:
    """The cost dict from its measured parts (the rates derived here, so every stage derives them alike)."""
    rate = train_images / train_seconds if train_seconds > 0 else None
    per_1k = 1000.0 * train_seconds * n_devices / train_images if train_images > 0 else None
    return {"trainable_params": int(trainable_params), "total_params": int(total_params),
            "peak_memory_bytes": None if peak_memory_bytes is None else int(peak_memory_bytes),
            "peak_memory_kind": peak_memory_kind, "train_seconds": float(train_seconds),
            "train_images": int(train_images), "train_images_per_second": rate,
            "device_seconds_per_1k_images": per_1k, "device": device, "n_devices": int(n_devices)}


def with_flops(cost: dict[str, Any] | None, model: Any, image_size: int | None,
               processor: Any = None) -> dict[str, Any] | None:
    """`cost` with "flops_per_image" added (`clip.flops.flops_per_image`), at the side the model sees:
    `image_size` when the run set one, else the processor's output (DINOv2 crops to 224 although its
    position grid is 518), else the model's own. Counting runs on a meta copy of the model after
    training: should it fail for some architecture, the run keeps its results and the record says why."""
    if cost is None:
        return None
    from cifake_lib.clip.flops import flops_per_image

    try:
        flops: dict[str, Any] = flops_per_image(model, image_size or processor_side(processor))
    except Exception as e:  # noqa: BLE001 (a count is a record, not a reason to lose a finished run)
        flops = {"error": f"{type(e).__name__}: {e}"[:300]}
    return {**cost, "flops_per_image": flops}


def processor_side(processor: Any) -> int | None:
    """The side of the pixel_values `processor` makes, when it is fixed (a crop or a square resize)."""
    if processor is None:
        return None
    from cifake_lib.data.preprocess import ImagePreprocessor

    size = ImagePreprocessor.from_processor(processor).output_size
    return int(size[0]) if size else None


__all__ = ["processor_side", "with_flops", "COST_KEY", "CPU_PEAK", "CUDA_PEAK", "FIELDS", "CostMeter", "cost_record", "count_parameters",
           "peak_rss_bytes"]
