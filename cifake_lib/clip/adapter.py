"""CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters",
IJCV 2024; gaopengcode/CLIP-Adapter `clip_adapter.py`): a bottleneck MLP on CLIP's frozen image
features, mixed back with a residual ratio:

    A(x) = ReLU(ReLU(x W1) W2)        W1: (D, D / reduction), W2: (D / reduction, D), no biases
    x'   = ratio * A(x) + (1 - ratio) * x

on the projected image embedding before its L2 normalisation; the zero-shot text head of the
prompts then scores x' as it scores x. With ratio 0 the adapter changes nothing.

The backbone's modules and weights stay as they are (the exported model folder is the input
model): in training the classifier passes the image embedding through the adapter, and detectors
apply it to the image features (`ClipAdapter.adapt`). Saved as safetensors with its
reduction and ratio in the metadata.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

ADAPTER_FILE = "clip_adapter.safetensors"


class ClipAdapter(nn.Module):
    """The bottleneck MLP and its residual ratio over `dim`-wide image features."""

    def __init__(self, dim: int, reduction: int = 4, ratio: float = 0.2):
        super().__init__()
        if dim < 1 or reduction < 1 or dim // reduction < 1:
            raise ValueError(f"CLIP-Adapter: feature width {dim} / reduction {reduction} leaves no bottleneck")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"CLIP-Adapter: ratio must be in [0, 1], got {ratio}")
        self.reduction = int(reduction)
        self.ratio = float(ratio)
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(dim // reduction, dim, bias=False), nn.ReLU(inplace=True))

    @property
    def dim(self) -> int:
        return int(self.fc[0].in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ratio == 0.0:  # exactly the input (0 * A(x) could still carry a NaN or an inf)
            return x
        w = self.fc[0].weight
        return self.ratio * self.fc(x.to(w.dtype)).to(x.dtype) + (1.0 - self.ratio) * x

    @torch.no_grad()
    def adapt(self, features):
        """The adapted features of a float array or tensor (N, D), same type back (numpy float32)."""
        import numpy as np

        if isinstance(features, np.ndarray):
            w = self.fc[0].weight
            x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(w.device)
            return self(x).float().cpu().numpy()
        return self(features)

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        from cifake_lib.core.files import atomic_write

        meta = {"reduction": str(self.reduction), "ratio": repr(self.ratio), "dim": str(self.dim),
                "method": "CLIP-Adapter (Gao et al., IJCV 2024)"}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClipAdapter:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: CLIP-Adapter weights not found")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            adapter = cls(int(meta["dim"]), int(meta["reduction"]), float(meta["ratio"]))
            adapter.load_state_dict(tensors, strict=True)
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path}: not a CLIP-Adapter file ({e})") from None
        return adapter.eval()


__all__ = ["ADAPTER_FILE", "ClipAdapter"]
