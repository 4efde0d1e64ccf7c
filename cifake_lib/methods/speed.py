"""Speed of CLIP training and inference: torch.compile of the towers, fused AdamW, the SDPA check,
FLOP counting, the GPUs' peak throughput (for MFU) and peak GPU memory per stage.

MFU (model FLOP utilisation, Chowdhery et al. 2022, PaLM, sec. 4.1) = achieved model FLOP/s / the
device's dense peak. Model FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls,
convolutions, attention; 2 FLOPs per multiply-add); the optimizer's elementwise work is not counted.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cifake_lib.methods.finetune_config import COMPILE as COMPILE_MODES  # "auto", "on", "off"

# Measured speed-up (eager time / compiled time, fine-tuning end to end) of `compile_towers` per GPU,
# keyed by a pattern of torch.cuda.get_device_name(). "auto" compiles only where the measured
# speed-up is at least AUTO_COMPILE_MIN: compiling costs a minute or more up front and recompiles
# for new shapes, which a small gain does not repay. Filled from `bench/gpu_study.py` (no GPU has
# been measured yet, so "auto" compiles nowhere).
COMPILE_SPEEDUP: dict[str, float] = {}
AUTO_COMPILE_MIN = 1.10

# Dense (no sparsity) tensor-core peaks in TFLOP/s, (bf16, fp16), from NVIDIA's datasheets; where a
# datasheet gives only the 2:4-sparsity figure (marked *), the dense peak is half of it.
#   T4:   "Mixed Precision (FP16/FP32) 65 TFLOPS"; no bf16 tensor cores (NVIDIA T4 datasheet, 2019).
#   L4:   FP16 / BF16 Tensor Core 242* (NVIDIA L4 datasheet, 2023).
#   A100: BF16 / FP16 Tensor Core 312, 624* (NVIDIA A100 datasheet, 2021; SXM and PCIe alike).
#   H100: SXM 1,979*, PCIe 1,513*, NVL 1,671* (NVIDIA H100 datasheet, 2023).
#   H200: SXM 1,979*, NVL 1,671* (NVIDIA H200 datasheet, 2024).
# Patterns are tried in order (the NVL/PCIe variants before their family) on the device name.
PEAK_TFLOPS: tuple[tuple[str, float | None, float], ...] = (
    (r"\bH200 NVL\b", 835.5, 835.5),
    (r"\bH200\b", 989.5, 989.5),
    (r"\bH100 NVL\b", 835.5, 835.5),
    (r"\bH100 PCIe\b", 756.5, 756.5),
    (r"\bH100\b", 989.5, 989.5),
    (r"\bA100\b", 312.0, 312.0),
    (r"\bL4\b", 121.0, 121.0),
    (r"\bT4\b", None, 65.0),
)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# torch.compile of the towers
# ---------------------------------------------------------------------------


def compile_support(device: torch.device | str) -> str | None:
    """None when torch.compile's default backend (inductor) can run on `device`, else the reason."""
    device = torch.device(device)
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "cpu":
        if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            return "no C++ compiler (g++) on PATH, which torch.compile needs on the CPU"
        return None
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed, which torch.compile needs on CUDA"
        if torch.cuda.get_device_capability(device) < (7, 0):
            return f"{torch.cuda.get_device_name(device)} is older than compute capability 7.0 (triton's minimum)"
        return None
    return f"torch.compile is not used on {device.type}"


def resolve_compile(mode: str, device: torch.device | str) -> tuple[bool, str]:
    """(compile or not, why) for the `compile` setting "auto" | "on" | "off" on `device`."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    device = torch.device(device)
    if mode == "off":
        return False, "compile off"
    unsupported = compile_support(device)
    if unsupported:
        return False, f"compile {mode}: not compiling, {unsupported}"
    if mode == "on":
        return True, "compile on"
    if device.type != "cuda":
        return False, f"compile auto: off on {device.type} (on for GPUs where it was measured to help)"
    name = torch.cuda.get_device_name(device)
    speedup = next((s for pattern, s in COMPILE_SPEEDUP.items() if re.search(pattern, name)), None)
    if speedup is None or speedup < AUTO_COMPILE_MIN:
        measured = "not measured" if speedup is None else f"measured {speedup:.2f}x"
        return False, f"compile auto: off on {name} ({measured}; pass compile on to try it)"
    return True, f"compile auto: on for {name} (measured {speedup:.2f}x)"


def towers(model: nn.Module) -> list[nn.Module]:
    """The vision and text transformers of a backbone (`clip.backbone`: an image-only encoder has
    only the first), or of a module holding one as `.clip`; none for anything else."""
    from cifake_lib.clip import backbone

    clip = getattr(model, "clip", model)
    if not hasattr(getattr(clip, "config", None), "model_type"):
        return []
    return [backbone.vision_tower(clip)] + backbone.text_modules(clip)[:1]


def compile_towers(model: nn.Module, mode: str = "on", *, compile_mode: str | None = None,
                   log: Callable[[str], None] = _log) -> nn.Module:
    """Compile the vision and text towers in place (`nn.Module.compile`) per `mode`; returns `model`.

    In place, so parameter names, state_dict and checkpoints are those of the eager model. A no-op
    when `mode` resolves to off; a log line says so when compiling was asked for ("on") but the
    device cannot, or when "auto" decides on a GPU, and whenever it compiles.
    `compile_mode` is torch.compile's own mode (None, "reduce-overhead", "max-autotune", ...).
    """
    parts = towers(model)
    if not parts:
        raise TypeError(f"compile_towers: {type(model).__name__} has no vision_model/text_model (not a CLIP model)")
    device = next(model.parameters()).device
    on, why = resolve_compile(mode, device)
    if on or mode == "on" or (mode == "auto" and device.type == "cuda"):
        log(f"speed: {why}")
    if on:
        for tower in parts:
            tower.compile(mode=compile_mode)
    return model


def is_compiled(module: nn.Module) -> bool:
    """Whether `module.compile()` was called on it."""
    return getattr(module, "_compiled_call_impl", None) is not None


# ---------------------------------------------------------------------------
# Optimizer and attention
# ---------------------------------------------------------------------------


def make_adamw(param_groups: Sequence[dict[str, Any]] | Sequence[nn.Parameter], lr: float,
               betas: tuple[float, float], eps: float, weight_decay: float,
               device: torch.device | str) -> torch.optim.AdamW:
    """AdamW with the fastest update the device has: fused (one kernel) on CUDA, foreach elsewhere.

    Both compute the same update as the for-loop AdamW (torch's tests hold them to it); fused also
    works with GradScaler, which unscales inside the kernel.
    """
    kind = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kind)


def adamw_kind(optimizer: torch.optim.Optimizer) -> str:
    """"fused", "foreach" or "for-loop": the update an AdamW runs (None defaults resolve per device)."""
    d = optimizer.defaults
    if d.get("fused"):
        return "fused"
    if d.get("foreach"):
        return "foreach"
    if d.get("foreach") is None:  # torch's default: foreach when every parameter is on CUDA
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if params and all(p.is_cuda for p in params):
            return "foreach"
    return "for-loop"


def attention_implementation(model: nn.Module) -> dict[str, str]:
    """{"vision": ..., "text": ...}: the attention implementation the towers' configs name."""
    return {name.split("_")[0]: str(t.config._attn_implementation)
            for name, t in zip(("vision_model", "text_model"), towers(model), strict=False)
            if hasattr(t, "config")}


class _SdpaCalls(torch.overrides.TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def count_sdpa_calls(fn: Callable[[], Any]) -> int:
    """How many times `fn()` calls torch's scaled_dot_product_attention (whatever backend it picks)."""
    mode = _SdpaCalls()
    with mode:
        fn()
    return mode.calls


def check_sdpa(model: nn.Module, fn: Callable[[], Any]) -> int:
    """Raise unless both towers are configured for SDPA and `fn()` (a forward) runs attention through it.

    Returns the number of SDPA calls. Eager attention (softmax of an explicit matmul) materialises
    the (tokens x tokens) scores per head and is slower; transformers 5 defaults CLIP to SDPA.
    """
    impl = attention_implementation(model)
    wrong = {k: v for k, v in impl.items() if v != "sdpa"}
    if wrong:
        raise RuntimeError(f"attention is not SDPA: {wrong}; load the model with attn_implementation='sdpa'")
    calls = count_sdpa_calls(fn)
    if calls == 0:
        raise RuntimeError("the forward pass made no scaled_dot_product_attention call")
    return calls


# ---------------------------------------------------------------------------
# FLOPs, peaks, MFU
# ---------------------------------------------------------------------------


def _register_cpu_sdpa_flops() -> None:
    """FlopCounterMode counts the CUDA attention kernels; add the CPU flash kernel (same FLOPs)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is None or fwd in fc.flop_registry:
        return

    def attn(q_shape, k_shape, v_shape) -> int:
        # (b, h, s_q, d) @ (b, h, d, s_k), then (b, h, s_q, s_k) @ (b, h, s_k, d_v): 2 FLOPs per MAC.
        b, h, s_q, d = q_shape
        s_k, d_v = k_shape[-2], v_shape[-1]
        return 2 * b * h * s_q * s_k * (d + d_v)

    @fc.register_flop_formula(fwd)
    def _fwd(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return attn(query, key, value)

    if bwd is not None:
        @fc.register_flop_formula(bwd)
        def _bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
            return 2 * attn(query, key, value)  # dS, dV, dQ, dK: twice the forward's matmuls


def count_flops(fn: Callable[[], Any]) -> dict[str, int]:
    """FLOPs of `fn()` (e.g. a forward, or a forward and its backward): {"total": ..., op name: ...}."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_sdpa_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": int(counter.get_total_flops()), **by_op}


def train_step_flops(model: nn.Module, batch: Sequence[Any], loss_fn: Callable[[nn.Module, Sequence[Any]], torch.Tensor]
                     ) -> dict[str, int]:
    """FLOPs of one forward + backward of `loss_fn(model, batch)`, counted by FlopCounterMode.

    Returns {"total": ..., op name: ...}. Gradients it makes are cleared. Run it on the eager model:
    the compiled one does the same arithmetic.
    """
    counts = count_flops(lambda: loss_fn(model, batch).backward())
    model.zero_grad(set_to_none=True)
    return counts


def flops_per_image(model: nn.Module, batch: Sequence[Any],
                    loss_fn: Callable[[nn.Module, Sequence[Any]], torch.Tensor]) -> float:
    """One training step's model FLOPs divided by the batch size (the length of `batch[0]`)."""
    return train_step_flops(model, batch, loss_fn)["total"] / len(batch[0])


def peak_tflops(device_name: str, precision: str) -> float | None:
    """Dense bf16/fp16 tensor-core peak of the GPU named `device_name`; None if unknown or fp32."""
    column = {"bf16": 1, "fp16": 2}.get(precision)
    if column is None:
        return None
    for row in PEAK_TFLOPS:
        if re.search(row[0], device_name):
            return row[column]
    return None


def device_peak_tflops(device: torch.device | str, precision: str) -> float | None:
    """`peak_tflops` of a CUDA device (None on the CPU and on GPUs not in the table)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return peak_tflops(torch.cuda.get_device_name(device), precision)


def mfu(images_per_second: float, flops_per_img: float, peak: float | None) -> float | None:
    """Achieved model FLOP/s over the peak (TFLOP/s); None without a peak."""
    if not peak:
        return None
    return images_per_second * flops_per_img / (peak * 1e12)


# ---------------------------------------------------------------------------
# Peak GPU memory of a stage
# ---------------------------------------------------------------------------


@dataclass
class PeakMemory:
    """Filled when the `peak_gpu_memory` block ends: bytes, or None without CUDA."""

    peak_bytes: int | None = None

    @property
    def peak_mb(self) -> float | None:
        return None if self.peak_bytes is None else round(self.peak_bytes / 2**20, 1)


@contextlib.contextmanager
def peak_gpu_memory() -> Iterator[PeakMemory]:
    """`torch.cuda.max_memory_allocated` over the block (reset at its start); None without CUDA.

        with peak_gpu_memory() as mem:
            run_stage()
        record["peak_gpu_mb"] = mem.peak_mb
    """
    result = PeakMemory()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        yield result
    finally:
        if cuda:
            torch.cuda.synchronize()
            result.peak_bytes = int(torch.cuda.max_memory_allocated())
