"""Fine-tuning as a method of the study (`cifake finetune`): train, WiSE-FT when asked, evaluate
the best model on validation (threshold) and test, and write the run folder.

Whatever the loss, a fine-tuned dual encoder stays a zero-shot classifier: `zeroshot.ClipDetector`
with the run's prompts scores it (detector.json kind "clip", the model in OUT/model/). An
image-only encoder's run is a linear probe on its fine-tuned features (kind "probe", the head in
OUT/probe.safetensors, the encoder in OUT/model/). detector.json records the loss, a methods
paragraph (`methods_text`) and our settings beside FLYP's own (`hyperparameters_vs_flyp`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cifake_lib.clip import backbone
from cifake_lib.clip.adapter import ADAPTER_FILE
from cifake_lib.clip.coop import CONTEXT_FILE, PromptContext
from cifake_lib.clip.head import build_head
from cifake_lib.clip.models import quiet_transformers
from cifake_lib.clip.prompts import PromptSet
from cifake_lib.core.backbones import family_of_reference
from cifake_lib.core.files import read_json
from cifake_lib.core.results import RunResult, settings_record
from cifake_lib.data.config import DataConfig, loaded
from cifake_lib.methods.adapter import adapter_methods_text
from cifake_lib.methods.checkpoints import HISTORY_FILE, export_model
from cifake_lib.methods.cost import with_flops
from cifake_lib.methods.finetune.loop import TrainOutcome, train
from cifake_lib.methods.finetune.losses import loss_name
from cifake_lib.methods.finetune.setup import FINETUNED_DIR, MODEL_DIR, PROBE_FILE, checked
from cifake_lib.methods.finetune_config import LOSS_NAMES, FinetuneConfig
from cifake_lib.methods.lora import lora_methods_text
from cifake_lib.viz.run_figures import training_curves_figure

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData

CURVES_FILE = "training_curves.png"


@dataclass
class FinetuneResult:
    outcome: TrainOutcome
    metrics: dict[str, Any] | None  # test metrics (None when stopped by stop_after)
    out: Path

def load_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of OUT/history.json (or of a history dict/list)."""
    h = read_json(Path(path) / HISTORY_FILE if Path(path).is_dir() else path)
    return h["records"] if isinstance(h, dict) else h

FLYP_SETTINGS = {
    "source": "locuslab/FLYP src/args.py and README.md (Goyal et al., CVPR 2023)",
    "batch_size": "512 (ImageNet), 256 (iWILDCam, FMoW, transfer and few-shot)",
    "lr": 1e-5,
    "warmup_steps": 500,
    "min_lr_ratio": 0.0,  # --min_lr 0
    "weight_decay": "0.1 (ImageNet), 0.2 (iWILDCam, FMoW)",
    "betas": [0.9, 0.999],  # torch.optim.AdamW's defaults: FLYP passes none
    "eps": 1e-8,
    "epochs": "10 (ImageNet), 20 (iWILDCam, FMoW)",
}

WHY_OURS = ("batch 128: a ViT-B/32 fine-tune of both towers must fit a 15 GB T4 (Colab's GPU) with fp16 "
            "activations; warm-up 5% of the run and a cosine floor of 0.1 x lr: our runs are a few hundred "
            "to a few thousand steps, where FLYP's 500 warm-up steps would be most of the run; AdamW beta2 "
            "0.98 and eps 1e-6: CLIP's pre-training values, stabler in fp16 than PyTorch's defaults")

def hyperparameters_vs_flyp(cfg: FinetuneConfig) -> dict[str, Any]:
    """detector.json's record: our settings beside FLYP's own, and why ours differ."""
    ours = {"batch_size": cfg.batch_size * cfg.grad_accum, "lr": cfg.base_lr,
            "warmup_steps": cfg.warmup_steps if cfg.warmup_steps is not None else "5% of the run",
            "min_lr_ratio": cfg.min_lr_ratio, "weight_decay": cfg.weight_decay, "betas": [cfg.beta1, cfg.beta2],
            "eps": cfg.eps, "epochs": cfg.max_steps and f"{cfg.max_steps} steps" or cfg.epochs}
    return {"ours": ours, "flyp": FLYP_SETTINGS, "why": WHY_OURS}


def methods_text(cfg: FinetuneConfig, family: str | None = None) -> str:
    """One paragraph for a methods section: the loss by its name, with its source and settings.

    family: the backbone's ("clip", "siglip", "image"); default: what the model reference says."""
    family = family or family_of_reference(cfg.model) or "clip"
    if family == "image":
        return _image_text(cfg)
    if cfg.train in ("lora", "adapter"):  # hook: methods.lora / methods.adapter
        added = lora_methods_text(cfg) if cfg.train == "lora" else adapter_methods_text(cfg)
        if cfg.train == "adapter" or cfg.loss == "ce":
            return added + " " + CE_TEXT
        return added + " " + _flyp_text(cfg, family)
    if cfg.train == "prompt":
        return (f"CoOp prompt tuning (Zhou et al., IJCV 2022): {cfg.n_ctx} context vectors shared by both labels, "
                f"placed before the label word, learned with the cross-entropy over the two label prompts; "
                f"both encoders frozen. AdamW at {cfg.prompt_lr:g} with warm-up and cosine decay "
                "(CoOp: SGD at 2e-3, momentum 0.9, cosine).")
    if cfg.loss == "flyp":
        s = _flyp_text(cfg, family)
    elif cfg.loss == "ce":
        s = f"{CE_TEXT} Training {cfg.train} encoder(s)."
    else:
        s = f"{LOSS_NAMES[cfg.loss]}, training {cfg.train} encoder(s)."
    h = hyperparameters_vs_flyp(cfg)["ours"]
    return (s + f" Settings: batch {h['batch_size']}, lr {h['lr']:g}, warm-up {h['warmup_steps']}, cosine floor "
            f"{h['min_lr_ratio']:g} x lr, AdamW betas {tuple(h['betas'])}, eps {h['eps']:g}, weight decay "
            f"{h['weight_decay']:g} (FLYP: batch 512/256, warm-up 500 steps, floor 0, betas (0.9, 0.999), "
            f"eps 1e-8; ours differ because {WHY_OURS}).")


CE_VARIANT = "averaged class prompts"

CE_TEXT = ("Loss: CE over the averaged class prompts: the cross-entropy of logit_scale x cos(image, label "
           "embedding), each label's embedding the normalised mean of all its templates' embeddings at every step "
           "(FLYP's CE ablation instead draws one random template per class at each step).")


def _flyp_text(cfg: FinetuneConfig, family: str = "clip") -> str:
    loss = ("SigLIP's own pairwise sigmoid loss (Zhai et al., ICCV 2023: every image-caption pair of the batch a "
            "binary problem, positive for the image's own caption), FLYP's principle of fine-tuning as the model "
            "was pre-trained" if family == "siglip" else
            "the symmetric in-batch contrastive loss (arange targets)")
    clamp = "the learned logit scale clamped at 100" if family == "clip" else "SigLIP's logit scale and bias learned"
    return (f"FLYP (Goyal et al., CVPR 2023): each training image is paired with a caption of its label (one of "
            f"the {cfg.prompts!r} prompt set's templates, drawn per image and epoch, the CIFAR class filled in "
            f"where the set has {{class}} templates), trained with {loss}; same-label captions in a batch are "
            "negatives, as in FLYP's binary tasks. Two differences from FLYP: one template per image per epoch "
            f"(FLYP's data has one row per image and template), and {clamp}. The model is evaluated as a "
            "zero-shot classifier.")


def _image_text(cfg: FinetuneConfig) -> str:
    what = {"image": "the whole image encoder", "lora": lora_methods_text(cfg),
            "adapter": adapter_methods_text(cfg).split(", scored by")[0]}[cfg.train]
    return (f"An image-only encoder (no text tower): a linear head on the L2-normalised image embedding, trained "
            f"with the cross-entropy together with {what}; the head starts at zero. Exported as a linear probe "
            f"on the fine-tuned features. AdamW at {cfg.base_lr:g} with warm-up and cosine decay.")


def _detector(cfg: FinetuneConfig, model_dir: Path, prompts: PromptSet, device):
    """The run's detector on `model_dir`: a ClipDetector (with CoOp's context or the CLIP-Adapter),
    or, for an image-only encoder, the linear head as a probe on its features."""
    from cifake_lib.clip.adapter import ClipAdapter
    from cifake_lib.clip.backbone import has_text
    from cifake_lib.methods.probe_fit import ProbeDetector, ProbeModel
    from cifake_lib.methods.zeroshot import ClipDetector, load_for_inference

    model, processor = load_for_inference(model_dir, device)
    out = Path(cfg.out)
    adapter = ClipAdapter.load(out / ADAPTER_FILE).to(next(model.parameters()).device) \
        if cfg.train == "adapter" else None
    if not has_text(model):
        return ProbeDetector(model, processor, ProbeModel.load(out / PROBE_FILE), detector=f"finetune:{cfg.train}",
                             model_ref=MODEL_DIR, adapter=adapter)
    context = PromptContext.load(out / CONTEXT_FILE, processor.tokenizer, model) if cfg.train == "prompt" else None
    return ClipDetector(model, processor, prompts, detector=f"finetune:{cfg.train}", model_ref=MODEL_DIR,
                        context=context, adapter=adapter)


def apply_wise_ft(data: CifakeData, cfg: FinetuneConfig, prompts: PromptSet, device=None) -> float:
    """WiSE-FT over cfg.wise_ft: OUT/wise_ft.csv, and the alpha with the best validation AUC
    exported as OUT/model/ (the fine-tuned model then kept in OUT/model_finetuned/). Returns alpha."""
    from transformers import AutoModel

    from cifake_lib.core.files import write_csv
    from cifake_lib.methods.wise_ft import COLUMNS, WISE_FT_FILE, interpolate, wise_ft_curve

    val = data.val if data.val is not None and len(data.val) else None
    if val is None:
        raise ValueError("wise_ft chooses alpha on validation: the data has no validation split")
    out = Path(cfg.out)
    ft_dir = out / FINETUNED_DIR if (out / FINETUNED_DIR / "config.json").is_file() else out / MODEL_DIR
    # AutoModel: the folder's own class (CLIPModel, SiglipModel); loaded once: the curve's weights and the export
    with quiet_transformers():
        zero_shot = AutoModel.from_pretrained(cfg.model, dtype=torch.float32).state_dict()
        ft = AutoModel.from_pretrained(ft_dir, dtype=torch.float32)
    fine_tuned = ft.state_dict()
    det = _detector(cfg, ft_dir, prompts, device)

    def make_detector(state: Mapping[str, torch.Tensor]):
        det.model.load_state_dict(state, strict=True)  # copies into the loaded model (its dtype/device)
        # the prompts through this text tower (no context: wise_ft refuses train=prompt)
        det.head = build_head(det.model, det.processor, det.prompts, marginal=det.head.marginal)
        return det

    rows = wise_ft_curve(zero_shot, fine_tuned, cfg.wise_ft, make_detector=make_detector, val=val,
                         test=data.test, batch_size=cfg.eval_batch_size)
    write_csv(out / WISE_FT_FILE, rows, COLUMNS)
    alpha = next(r["alpha"] for r in rows if r["chosen"])
    if alpha != 1.0:
        if ft_dir == out / MODEL_DIR:
            os.replace(out / MODEL_DIR, out / FINETUNED_DIR)
        # interpolate returns new tensors before load_state_dict copies them into ft (fine_tuned aliases ft)
        ft.load_state_dict(interpolate(zero_shot, fine_tuned, alpha))
        export_model(ft, det.processor, out / MODEL_DIR)
    elif ft_dir != out / MODEL_DIR:  # an earlier call chose alpha < 1: the fine-tuned model is the one
        shutil.rmtree(out / MODEL_DIR, ignore_errors=True)
        os.replace(ft_dir, out / MODEL_DIR)
    return alpha

def evaluate_run(data: CifakeData, cfg: FinetuneConfig, outcome: TrainOutcome, prompts: PromptSet, *,
                 seconds: float, args: Mapping[str, Any] | None = None, device: str | torch.device | None = None,
                 wise_ft_alpha: float | None = None) -> dict[str, Any]:
    """Score the exported model on val (threshold) and test with `ClipDetector`; write the run folder."""
    from cifake_lib.evaluation.runs import write_run
    from cifake_lib.viz.plots import save_figure

    out = Path(cfg.out)
    if device is None and cfg.cpu:
        device = "cpu"
    det = _detector(cfg, out / MODEL_DIR, prompts, device)
    val = data.val if data.val is not None and len(data.val) else None
    bs = cfg.eval_batch_size
    family = backbone.family(det.model)
    p_test = det.predict_proba(data.test.images, bs)  # no CIFAR classes: an exported detector cannot know them
    p_val = det.predict_proba(val.images, bs) if val is not None else None
    meta = {**det.to_json(MODEL_DIR), "prompt_set": prompts.name, "base_model": cfg.model, "train": cfg.train,
            "family": family, "image_size": cfg.image_size, "loss": cfg.loss,
            "loss_name": loss_name(cfg, family), "method": methods_text(cfg, family),
            "hyperparameters": hyperparameters_vs_flyp(cfg), "wise_ft_alpha": wise_ft_alpha,
            "best_step": outcome.best_step, "best_val_auc": outcome.best_val_auc,
            "steps": outcome.step, "total_steps": outcome.total_steps, "status": outcome.status,
            "ce_variant": CE_VARIANT if cfg.loss == "ce" else None}
    if (out / FINETUNED_DIR / "config.json").is_file() and wise_ft_alpha not in (None, 1.0):
        meta["finetuned_model"] = FINETUNED_DIR  # alpha = 1, for comparisons with the chosen alpha
    meta.pop("threshold", None)  # chosen on validation by write_run
    metrics = write_run(out, test=data.test, p_test=p_test, val=val, p_val=p_val, detector=meta,
                        model=cfg.model, data=data.source, seed=cfg.seed,
                        args={**(args if args is not None else cfg.to_dict()), "ce_variant": meta["ce_variant"]},
                        seconds=seconds, cost=with_flops(outcome.cost, det.model, cfg.image_size, det.processor))
    if outcome.history:
        save_figure(training_curves_figure(outcome.history, title=f"finetune:{cfg.train}"), out / CURVES_FILE)
    return metrics

def finetune(data: CifakeData, cfg: FinetuneConfig, *, args: Mapping[str, Any] | None = None,
             prompts: PromptSet | None = None) -> FinetuneResult:
    """Train (or resume), WiSE-FT when asked, then evaluate the model and write the run folder.

    When `cfg.stop_after` ends the run early, no metrics are written (status "stopped"): run
    again with `resume=True` to continue. args: run.json's settings record (default: `cfg`'s);
    prompts: `checked(cfg)` when the caller has checked the settings already.
    """
    t0 = time.perf_counter()
    prompts = checked(cfg) if prompts is None else prompts
    outcome = train(data, cfg, prompts)
    if outcome.status == "stopped":
        return FinetuneResult(outcome=outcome, metrics=None, out=outcome.out)
    if int(os.environ.get("RANK", "0")) != 0:  # under `accelerate launch` only the main process reports
        return FinetuneResult(outcome=outcome, metrics=None, out=outcome.out)
    device = "cpu" if cfg.cpu else None
    alpha = apply_wise_ft(data, cfg, prompts, device) if cfg.wise_ft else None
    metrics = evaluate_run(data, cfg, outcome, prompts, seconds=time.perf_counter() - t0, args=args, device=device,
                           wise_ft_alpha=alpha)
    return FinetuneResult(outcome=outcome, metrics=metrics, out=outcome.out)

def run(data: DataConfig | CifakeData, cfg: FinetuneConfig, out: str | os.PathLike) -> RunResult:
    """Fine-tune CLIP into `out` (or resume it), then score the best model; status "stopped" after
    `cfg.stop_after`. The settings are checked and the prompts resolved once, before data or model load.

    Raises `TrainingDiverged` / `OutOfMemory` when training cannot go on.
    """
    t0 = time.perf_counter()
    out = Path(out)
    prompts = checked(cfg)
    cfg = dataclasses.replace(cfg, out=str(out),
                              data=data.data if isinstance(data, DataConfig) else getattr(data, "source", None))
    cifake, dcfg = loaded(data, progress=cfg.progress)
    r = finetune(cifake, cfg, args=settings_record("finetune", dcfg, cfg, out=out), prompts=prompts)
    o = r.outcome
    outcome = {"status": o.status, "step": o.step, "total_steps": o.total_steps, "best_step": o.best_step,
               "best_val_auc": o.best_val_auc, "images_per_second": o.images_per_second}
    stopped = r.metrics is None and o.status == "stopped"
    return RunResult("finetune", out, runs=[] if r.metrics is None else [out],
                     metrics={} if r.metrics is None else {r.metrics["detector"]: r.metrics},
                     seconds=time.perf_counter() - t0, status="stopped" if stopped else "complete",
                     info={"outcome": outcome, "train": cfg.train, "main_process": os.environ.get("RANK", "0") == "0"})


__all__ = ["CE_TEXT", "CE_VARIANT", "CURVES_FILE", "FLYP_SETTINGS", "FinetuneResult", "apply_wise_ft", "evaluate_run",
           "finetune", "hyperparameters_vs_flyp", "load_history", "methods_text", "run"]
