"""LoRA on a backbone through `peft` (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models",
ICLR 2022): `--train lora`.

`peft.inject_adapter_in_model` puts a rank-r adapter beside each attention projection (q, k, v,
out) of every block of the chosen towers (`backbone.lora_target_regex`: CLIP's and SigLIP's
self_attn projections, DINOv2's query, key, value and output dense): W x + (alpha / r) B A x, A
initialised by peft (Kaiming-uniform), B zero, so training starts at the input model. Only A and
B learn: every backbone weight, the logit scale included, stays byte-identical while training.
The model keeps its class (peft swaps the projections in place), so `ClipClassifier`, the losses
and the checkpoints work as for a full fine-tune; a checkpoint holds the weights with the adapters.

At export the adapters are merged (W + (alpha / r) B A) into a plain CLIP folder OUT/model/ that
`load_detector`, `evaluate`, `predict` and robustness read like any fine-tuned model; the
adapters alone are kept in OUT/lora_adapter/ in peft's layout (adapter_config.json,
adapter_model.safetensors), which `peft.PeftModel.from_pretrained(base, OUT/lora_adapter)` loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from cifake_lib.methods.finetune_config import FinetuneConfig

ADAPTER_DIR = "lora_adapter"
ADAPTER_NAME = "default"


def lora_config(cfg: FinetuneConfig, model: nn.Module):
    """The `peft.LoraConfig` of a run's settings, for `model`'s family."""
    from peft import LoraConfig

    from cifake_lib.clip.backbone import lora_target_regex

    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_target_regex(model, cfg.lora_towers), bias="none")


def attach_lora(clip: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Adapters injected into `clip` in place (seeded by the caller's torch seed); returns clip."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(lora_config(cfg, clip), clip, adapter_name=ADAPTER_NAME)
    return clip


def is_lora_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def set_lora_trainable(clip: nn.Module) -> int:
    """Only the adapters learn (CLIP and its logit scale frozen); returns their parameter count."""
    n = 0
    for name, p in clip.named_parameters():
        p.requires_grad_(is_lora_parameter(name))
        n += p.numel() if p.requires_grad else 0
    if n == 0:
        raise ValueError("--train lora: no adapter was injected (no attention projection matched)")
    return n


def lora_layers(clip: nn.Module) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in clip.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def merged_state_dict(clip: nn.Module) -> dict[str, torch.Tensor]:
    """A plain state dict of the backbone on the CPU: each adapted weight W + (alpha / r) B A, adapters gone."""
    deltas = {f"{name}.base_layer.weight": m.get_delta_weight(ADAPTER_NAME) for name, m in lora_layers(clip).items()}
    out = {}
    for key, value in clip.state_dict().items():
        if is_lora_parameter(key):
            continue
        merged = value + deltas[key].to(value.dtype) if key in deltas else value
        out[key.replace(".base_layer.", ".")] = merged.detach().to("cpu", copy=True)
    return out


def merged_model(clip: nn.Module) -> nn.Module:
    """A new plain model of `clip`'s class (CPU, float32) holding the merged weights; `clip` is left as it is."""
    plain = type(clip)(clip.config)
    plain.load_state_dict(merged_state_dict(clip), strict=True)
    return plain.eval()


def adapter_state_dict(clip: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors under peft's saved names (base_model.model.<module>.lora_A.weight)."""
    suffix = f".{ADAPTER_NAME}."
    return {"base_model.model." + k.replace(suffix, "."): v.detach().cpu().contiguous()
            for k, v in clip.state_dict().items() if is_lora_parameter(k)}


def save_adapter(clip: nn.Module, cfg: FinetuneConfig, folder: str | Path) -> Path:
    """OUT/lora_adapter/: adapter_config.json + adapter_model.safetensors, as peft saves them."""
    from safetensors.torch import save_file

    from cifake_lib.core.files import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = lora_config(cfg, clip)
    config.base_model_name_or_path = cfg.model
    config.save_pretrained(str(folder))
    atomic_write(folder / "adapter_model.safetensors",
                 lambda p: save_file(adapter_state_dict(clip), str(p), metadata={"format": "pt"}))
    return folder


def export_lora(clip: nn.Module, processor, cfg: FinetuneConfig, out: Path, model_dir: str) -> None:
    """The merged plain backbone to OUT/<model_dir>/ and the adapters beside it (OUT/lora_adapter/)."""
    from cifake_lib.methods.checkpoints import export_model

    export_model(merged_model(clip), processor, out / model_dir)
    save_adapter(clip, cfg, out / ADAPTER_DIR)


def lora_methods_text(cfg: FinetuneConfig) -> str:
    towers = {"both": "both towers", "vision": "the image tower", "text": "the text tower"}[cfg.lora_towers]
    return (f"LoRA (Hu et al., ICLR 2022) through peft: rank-{cfg.lora_rank} adapters (alpha {cfg.lora_alpha:g}, "
            f"dropout {cfg.lora_dropout:g}) on the q, k, v and output projections of every attention layer of "
            f"{towers}; the backbone's weights and logit scale frozen and byte-identical; merged into the weights at "
            f"export. AdamW at {cfg.lora_lr:g}.")


__all__ = ["ADAPTER_DIR", "attach_lora", "export_lora", "lora_config", "lora_methods_text", "merged_model",
           "merged_state_dict", "set_lora_trainable"]
