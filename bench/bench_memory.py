"""Does the report preset fit a 15 GB GPU (Colab's T4)? Peak memory per stage, estimated on any machine.

    python bench/bench_memory.py --model STANDIN   # a ViT-B/32 CLIP folder (see below)
    python bench/bench_memory.py                   # ViT-B/32-shaped random CLIP (CLIP's vocabulary size)
    python bench/bench_memory.py --backbones       # every backbone's stand-in: CLIP ViT-B/32, B/16, L/14,
                                                   # SigLIP 2 base, DINOv2 base (published shapes, random weights)
    python bench/bench_memory.py --json

Fine-tuning: weights, gradients and AdamW moments are counted exactly from the model; the activations
autograd keeps are measured in one forward under autocast at two small batch sizes and extrapolated
to the preset's batch (see cifake_lib.methods.memory). Inference stages are modelled. Every figure
printed is an ESTIMATE; `bench/gpu_study.py` measures torch.cuda.max_memory_allocated on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import prepare

PRESETS = ("report", "smoke")
# bench_finetune.METHODS keys measured: both encoders under FLYP and under CE, one tower (image, text),
# CoOp's context (its PromptContext), LoRA adapters under FLYP's loss, and CLIP-Adapter; an image-only
# encoder (no text tower) the image
# tower with its linear head, LoRA and CLIP-Adapter
MEASURED = ("flyp", "ce", "image", "text", "prompt", "lora", "adapter")
MEASURED_IMAGE_ONLY = ("image", "lora", "adapter")
# --backbones: (family, tiny.SHAPES name) of each stand-in
BACKBONES = (("clip", "vit-b-32"), ("clip", "vit-b-16"), ("clip", "vit-l-14"), ("siglip", "siglip2-base"),
             ("dinov2", "dinov2-base"))


def preset_batches(preset: str) -> dict[str, int]:
    """The batch sizes the preset gives each stage, every default filled in by `pipeline.study_config`."""
    from cifake_lib.app.pipeline import study_config

    cfg = study_config(preset)
    ft = cfg["finetune"]
    return {
        "finetune_batch": int(ft["batch_size"]),
        "finetune_prompts": str(ft["prompts"]),
        "grad_accum": int(ft["grad_accum"]),
        "finetune_eval": int(ft["eval_batch_size"]),
        "zeroshot": int(cfg["zeroshot"]["batch_size"]),
        "probe": int(cfg["probe"]["batch_size"]),
        "robustness": int(cfg["robustness"]["batch_size"]),
    }


def measure_training(model_dir: str, method: str, dtype, sizes: tuple[int, int], prompts: str):
    """(CLIP config, n_params, n_trainable, bytes/image, fixed bytes) of fine-tuning with `method`
    (a bench_finetune.METHODS key), on bench_finetune's classifier, batch and loss."""
    from bench_finetune import Variant, _loss_fn, _setup

    from cifake_lib.methods.memory import activation_fit, saved_activation_bytes

    variant = Variant("off", "foreach", method)  # eager on the CPU; the optimizer is not stepped
    built = {}

    def measure(b: int) -> int:
        import gc

        built.clear()
        gc.collect()  # the last measurement's model: its cycles (peft, hooks) would wait for the collector
        cfg, model, _, batch, _ = _setup(model_dir, variant, b, "cpu", prompts)
        built["model"] = model
        return saved_activation_bytes(model, batch, _loss_fn(cfg), dtype)

    per_image, fixed = activation_fit(measure, sizes)
    model = built["model"]
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model.clip.config, n_params, n_trainable, per_image, fixed


def _in_own_process(fn, *args):
    """fn(*args) in a fresh process: each measurement loads a model and trains a step, and the memory
    a CPU process has touched is not given back, so a long list of large models would exhaust the host."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def vision_config_of(config):
    """The vision config of a dual encoder's config, or the config of an image-only encoder."""
    return getattr(config, "vision_config", None) or config


def layer_probe_memory(vision_config, n_params: int, batch: int, side: int):
    """`probe --layers`: the probe's inference plus every block's hidden states, which
    output_hidden_states keeps alive until the batch's class tokens are taken (modelled, fp16)."""
    import dataclasses

    from cifake_lib.methods.memory import GIB, inference_memory

    row = inference_memory("probe --layers", vision_config, n_params, batch, "fp16", image_size=side)
    tokens = (side // vision_config.patch_size) ** 2 + 1
    hidden = (vision_config.num_hidden_layers + 1) * batch * tokens * vision_config.hidden_size * 2 / GIB
    return dataclasses.replace(row, activations_gib=row.activations_gib + hidden, total_gib=row.total_gib + hidden,
                               how=row.how + " + all blocks' hidden states")


def estimates(model_dir: str, preset: str, precision: str, sizes: tuple[int, int]) -> dict:
    import torch

    from cifake_lib.clip.models import load_processor
    from cifake_lib.core.backbones import TEXT_FAMILIES, family_of_reference
    from cifake_lib.methods.cost import processor_side
    from cifake_lib.methods.memory import inference_memory, training_memory

    b = preset_batches(preset)
    dtype = torch.bfloat16  # on the CPU; fp16 saves the same bytes
    family = family_of_reference(model_dir)
    text = family is None or family in TEXT_FAMILIES  # unknown until loaded: measured as a dual encoder
    # the side the model is fed (DINOv2's position grid is for 518 px; its processor crops 224)
    side = processor_side(load_processor(model_dir, family or "clip"))
    rows, measured = [], {}
    for method in (MEASURED if text else MEASURED_IMAGE_ONLY):
        name = f"finetune ({method})"
        config, n_params, n_trainable, per_image, fixed = _in_own_process(
            measure_training, model_dir, method, dtype, sizes, b["finetune_prompts"])
        measured[name] = {"method": method, "activation_mib_per_image": round(per_image / 2**20, 2),
                          "activation_mib_fixed": round(fixed / 2**20, 1), "trainable_params": n_trainable}
        rows.append(training_memory(name, n_params, n_trainable, per_image, fixed, b["finetune_batch"], precision))
    inference = [("finetune eval", b["finetune_eval"]), ("zeroshot", b["zeroshot"]), ("probe", b["probe"]),
                 ("evaluate / robustness", b["robustness"])]
    for name, batch in (x for x in inference if x[0] != "zeroshot" or text):
        rows.append(inference_memory(name, vision_config_of(config), n_params, batch, "fp16", image_size=side))
    rows.append(layer_probe_memory(vision_config_of(config), n_params, b["probe"], side))
    return {"model": model_dir, "preset": preset, "precision": precision, "batches": b,
            "measured_at_batch_sizes": list(sizes), "measured": measured, "n_params": n_params,
            "rows": [r.to_dict() for r in rows]}


def _print(result: dict, a, label: str) -> None:
    from cifake_lib.methods.memory import T4_BUDGET_GIB

    print(f"{label}: ESTIMATED peak GPU memory per stage, {a.preset} preset, {a.precision} (T4 budget "
          f"{T4_BUDGET_GIB} GiB of max_memory_allocated), {result['n_params'] / 1e6:.1f} M parameters")
    for name, m in result["measured"].items():
        print(f"  measured {name}: {m['activation_mib_per_image']} MiB/image + {m['activation_mib_fixed']} MiB "
              f"fixed saved activations (batches {a.sizes}), {m['trainable_params'] / 1e6:.1f} M trainable")
    print(f"{'stage':<24}{'batch':>6}{'weights':>9}{'grads':>7}{'AdamW':>7}{'activ.':>8}{'total':>8}  fits T4  how")
    for r in result["rows"]:
        print(f"{r['stage']:<24}{r['batch_size']:>6}{r['weights_gib']:>9.2f}{r['grads_gib']:>7.2f}"
              f"{r['optimizer_gib']:>7.2f}{r['activations_gib']:>8.2f}{r['total_gib']:>8.2f}  "
              f"{'yes' if r['fits_t4'] else 'NO':<7}  {r['how']}")
    fits = [r for r in result["rows"] if r["stage"].startswith("finetune (") and not r["fits_t4"]]
    for r in fits:  # what would fit: the largest micro-batch under the budget, the rest by accumulation
        m = result["measured"][r["stage"]]
        per, fixed = m["activation_mib_per_image"], m["activation_mib_fixed"]
        states = r["weights_gib"] + r["grads_gib"] + r["optimizer_gib"]
        room = (T4_BUDGET_GIB - states) / 1.15 * 1024 - fixed
        print(f"  {r['stage']} does not fit at batch {r['batch_size']}: "
              + accumulation_advice(r["batch_size"], int(room // per) if per > 0 else 0, r["stage"]))


def accumulation_advice(batch: int, largest_micro: int, stage: str) -> str:
    """--batch-size/--grad-accum that keep `batch` images per optimizer step with micro-batches of at
    most `largest_micro` images (the accumulation divides the batch, so every step sees the same
    images), and what it changes: an in-batch contrastive loss (FLYP's, and LoRA's under it) pairs
    images with captions within each micro-batch, so it sees fewer negatives."""
    if largest_micro < 1:
        return "its parameter states alone exceed the budget: use LoRA or CLIP-Adapter"
    accum = next(k for k in range(1, batch + 1) if batch % k == 0 and batch // k <= largest_micro)
    micro = batch // accum
    advice = f"--batch-size {micro} --grad-accum {accum} would (the same {batch} images per optimizer step"
    contrastive = any(name in stage for name in ("flyp", "lora", "image", "text"))
    if contrastive and accum > 1:
        return advice + f"; the in-batch contrastive loss then sees {micro - 1} negatives per image, not {batch - 1})"
    return advice + ")"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a model folder (e.g. the ViT-B/32 stand-in); default: a ViT-B/32-shaped random CLIP")
    ap.add_argument("--backbones", action="store_true",
                    help="every backbone's stand-in in turn (published shapes, random weights): " +
                    ", ".join(f"{f} {s}" for f, s in BACKBONES))
    ap.add_argument("--backbone", choices=[f"{f}:{s}" for f, s in BACKBONES],
                    help="one backbone's stand-in (run them one process each to keep the host's memory low)")
    ap.add_argument("--preset", choices=PRESETS, default="report", help="the study preset (default: report)")
    ap.add_argument("--precision", choices=("fp16", "bf16"), default="fp16",
                    help="training precision (fp16 on a T4, which has no bf16 tensor cores)")
    ap.add_argument("--sizes", default="2,4", help="two batch sizes to measure activations at (default 2,4)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    prepare()  # HF_HUB_OFFLINE before transformers is imported
    sizes = tuple(int(s) for s in a.sizes.split(","))
    from cifake_lib.clip.tiny import write_tiny_model

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        if a.model:
            results[a.model] = estimates(a.model, a.preset, a.precision, sizes)
        chosen = [tuple(a.backbone.split(":"))] if a.backbone else list(BACKBONES) if a.backbones else []
        for family, shape in chosen or ([] if a.model else [("clip", "vit-b-32")]):
            folder = write_tiny_model(Path(tmp) / shape, family, shape=shape)
            results[f"{family} {shape}"] = estimates(str(folder), a.preset, a.precision, sizes)
            for f in folder.glob("*.safetensors"):
                f.unlink()  # the next stand-in needs the disk
    if a.json:
        print(json.dumps(results, indent=2))
        return 0
    for label, result in results.items():
        _print(result, a, label)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
