"""The fine-tuning stage's settings (`FinetuneConfig`): every option declared once.

Each field is a CLI option of `cifake finetune`, a key of the `[finetune]` table of a study's
TOML, and a value recorded in run.json and every checkpoint. Adding an option is adding a
field here. Torch-free, so `cifake --help` stays light; the training lives in `finetune.py`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cifake_lib.core.config import setting
from cifake_lib.core.paths import find_moved, portable_path, resolve_recorded
from cifake_lib.core.settings import DEFAULT_MODEL

TRAIN_CHOICES = ("both", "image", "text", "prompt", "lora", "adapter")
# What each --train value adds to a frozen CLIP (the full fine-tunes add nothing: they change CLIP).
ADDED_MODULES = {"prompt": "CoOp context vectors", "lora": "LoRA adapters (peft) on attention projections",
                 "adapter": "CLIP-Adapter bottleneck MLP on the image features"}
LORA_TOWERS = ("both", "vision", "text")
LOSSES = ("flyp", "ce", "clip-label-aware")
LOSS_NAMES = {
    "flyp": "FLYP: symmetric in-batch contrastive loss, each image paired with a caption of its label",
    # FLYP's ce_ablation.py draws one random template per class at every step; ours averages every
    # template of each label at every step (the zero-shot head), so it is named for that.
    "ce": "CE over the averaged class prompts (cross-entropy against the zero-shot head's label embeddings)",
    "clip-label-aware": "in-batch CLIP loss with targets spread over same-label pairs",
}
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
COMPILE = ("auto", "on", "off")
LOG_WITH = ("auto", "tensorboard", "csv", "none")

# Fields that say how to run, not what to train: they may change on --resume.
RUNTIME_FIELDS = frozenset({"out", "resume", "stop_after", "progress", "keep_checkpoints", "cpu",
                            "eval_batch_size", "data", "compile", "wise_ft", "log_with"})

WHAT = "what to train"
OPTIM = "optimisation"
EVAL = "evaluation and checkpoints"


def parse_train(value: str) -> str:
    """"both" | "image" | "text" | "prompt" | "lora" | "adapter", also accepting "text,image", "image+text", "all"."""
    parts = {p.strip().lower() for p in re.split(r"[,+ ]", str(value)) if p.strip()}
    if parts in ({"both"}, {"all"}, {"text", "image"}):
        return "both"
    if parts in ({"image"}, {"text"}, {"prompt"}, {"lora"}, {"adapter"}):
        return parts.pop()
    raise ValueError(f"train must be both, image, text, prompt, lora, adapter or text,image; got {value!r}")


def parse_alphas(value: Any) -> list[float] | None:
    """WiSE-FT mixing weights from "0,0.5,1" or a list; None or "" for none. Each in [0, 1]."""
    if value is None or value == "" or value == []:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        alphas = [float(a) for a in items]
    except (TypeError, ValueError):
        raise ValueError(f"wise_ft must be numbers in [0, 1] separated by commas, e.g. 0,0.5,1; got {value!r}") from None
    bad = [a for a in alphas if not 0.0 <= a <= 1.0]
    if bad:
        raise ValueError(f"wise_ft: every alpha must be in [0, 1]; got {bad}")
    return sorted(set(alphas))


def _zero_is_none(value: int | None) -> int | None:
    return None if value == 0 else value


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run; saved into every checkpoint and run.json.

    Defaults suit CLIP ViT-B/32 on CIFAKE (AdamW lr 1e-5, weight decay 0.1, cosine with
    warm-up, clipping at 1.0). `batch_size` is the global batch of one forward pass, split
    across processes; an optimizer step sees batch_size * grad_accum images. `max_steps`, when
    set, fixes the run's length (it overrides `epochs`). `stop_after` ends this invocation after
    that many optimizer steps without changing the schedule; `--resume` continues.
    """

    model: str = setting(DEFAULT_MODEL, "backbone to start from: a Hub id or local model folder (CLIP, SigLIP, "
                         "or an image-only encoder such as DINOv2)", metavar="M")
    out: str = setting("", cli=False)  # the run folder; given to the stage, not as a setting
    train: str = setting("both", "what learns: both encoders (= text,image), image, text, prompt (CoOp: "
                         "context vectors before the label word, CLIP frozen, loss ce), lora (LoRA adapters "
                         "on the attention projections, CLIP frozen, merged at export) or adapter "
                         "(CLIP-Adapter on the image features, CLIP frozen, loss ce)",
                         convert=parse_train, metavar="PARTS", group=WHAT)
    prompts: str = setting("ensemble", "class prompts: a prompt set name, a .json/.toml file, or a "
                           "zero-shot run folder (its detector.json prompts)", metavar="NAME", group=WHAT)
    loss: str = setting("flyp", "flyp: FLYP, each image paired with a caption of its label, symmetric in-batch "
                        "contrastive loss; ce: CE over the averaged class prompts (every template of "
                        "each label averaged at each step; FLYP's CE ablation draws one template per class); "
                        "clip-label-aware: in-batch CLIP loss with targets spread over same-label pairs",
                        choices=LOSSES, group=WHAT)
    image_size: int | None = setting(None, "input side in pixels (position embeddings interpolated when it differs "
                                     "from the model's own)", low=8, metavar="PX", group=WHAT,
                                     show_default="the model's own")
    epochs: int = setting(3, "epochs", low=1, group=OPTIM)
    max_steps: int | None = setting(None, "optimizer steps of the whole run (overrides --epochs)", low=1,
                                    metavar="S", group=OPTIM)
    batch_size: int = setting(128, "images per forward pass, all processes together", low=1, group=OPTIM)
    grad_accum: int = setting(1, "forward passes per optimizer step (the same images per step; FLYP's "
                              "contrastive loss pairs within each pass, so with fewer negatives)",
                              low=1, metavar="K", group=OPTIM)
    lr: float = setting(1e-5, "peak AdamW learning rate", low=0.0, low_open=True, group=OPTIM)
    min_lr_ratio: float = setting(0.1, "the cosine ends at lr x this", low=0.0, high=1.0, group=OPTIM)
    warmup_steps: int | None = setting(None, "linear warm-up steps", low=0, group=OPTIM,
                                       show_default="5% of the run (of each phase with --lp-ft)")
    weight_decay: float = setting(0.1, "AdamW weight decay on weight matrices (not on biases, norms, "
                                  "embeddings, logit scale)", low=0.0, group=OPTIM)
    beta1: float = setting(0.9, "AdamW beta1", low=0.0, high=1.0, high_open=True, group=OPTIM)
    beta2: float = setting(0.98, "AdamW beta2 (CLIP's)", low=0.0, high=1.0, high_open=True, group=OPTIM)
    eps: float = setting(1e-6, "AdamW epsilon", low=0.0, low_open=True, group=OPTIM)
    grad_clip: float = setting(1.0, "gradient-norm clip", low=0.0, low_open=True, group=OPTIM)
    freeze_logit_scale: bool = setting(False, "keep CLIP's logit scale fixed", group=WHAT)
    lp_ft: bool = setting(False, "LP-FT: first train only the text side (the class embeddings) with the "
                          "image encoder frozen, then fine-tune as --train says", group=WHAT)
    lp_steps: int | None = setting(None, "steps of the LP phase", low=1, metavar="N", group=WHAT,
                                   show_default="10% of the run")
    flip: bool = setting(True, "no random horizontal flips", group=OPTIM)
    jpeg_prob: float = setting(0.0, "probability of a random JPEG re-encoding", low=0.0, high=1.0, group=OPTIM)
    blur_prob: float = setting(0.0, "probability of a random Gaussian blur", low=0.0, high=1.0, group=OPTIM)
    mixed_precision: str = setting("auto", "auto: bf16 on Ampere+ GPUs, fp16 with loss scaling on older "
                                   "ones (T4), no on CPU", choices=MIXED_PRECISION, group=OPTIM)
    gradient_checkpointing: bool = setting(False, "trade compute for memory", group=OPTIM)
    compile: str = setting("auto", "torch.compile the vision and text towers: on, off, or auto (on only for "
                           "GPUs where it was measured to help; see methods/speed.py)", choices=COMPILE, group=OPTIM)
    eval_every: int | None = setting(None, "also evaluate on validation every N steps (always at each "
                                     "epoch end)", low=1, metavar="N", group=EVAL)
    save_every: int = setting(500, "checkpoint every N steps (also at each epoch end)", low=1, metavar="N",
                              group=EVAL)
    keep_checkpoints: int = setting(2, "newest checkpoints kept", low=1, metavar="K", group=EVAL)
    patience: int | None = setting(3, "stop after this many evaluations without a better validation AUC "
                                   "(0: never)", convert=_zero_is_none, low=1, group=EVAL)
    eval_batch_size: int = setting(256, "images per evaluation batch", low=1, group=EVAL)
    log_every: int = setting(10, "log every N steps", low=1, metavar="N", group=EVAL)
    log_with: str = setting("auto", "training curves through Accelerate's trackers, under OUT/logs: tensorboard, "
                            "csv (OUT/logs/scalars.csv), none, or auto (TensorBoard when installed, else CSV)",
                            choices=LOG_WITH, group=EVAL)
    seed: int = setting(0, "training seed: initialisation of new parameters, batch order, augmentation",
                        key="train_seed", metavar="N", show_default="the data --seed")
    cpu: bool = setting(False, "train on the CPU even when a GPU is present")
    data: str | None = setting(None, cli=False)  # for the record; the data's identity is checked by fingerprint
    resume: bool = setting(False, "continue from the newest checkpoint in OUT (refused if the config "
                           "changed)", group=EVAL)
    stop_after: int | None = setting(None, "end this invocation after N optimizer steps (schedule unchanged; "
                                     "--resume continues)", low=1, metavar="N", group=EVAL)
    progress: bool = setting(True, "no progress bar", flags=("--quiet",))
    # --train prompt (CoOp): learned context vectors before the label word; encoders frozen.
    n_ctx: int = setting(16, "--train prompt: number of learned context vectors (CoOp's default)", low=1,
                         metavar="N", group=WHAT)
    prompt_lr: float = setting(2e-3, "--train prompt: AdamW learning rate of the context vectors (CoOp: SGD "
                               "at 2e-3)", low=0.0, low_open=True, metavar="LR", group=WHAT)
    # --train lora: peft LoRA on the q/k/v/out projections of the chosen towers; CLIP itself frozen.
    lora_rank: int = setting(8, "--train lora: rank r of each adapter", low=1, metavar="R", group=WHAT)
    lora_alpha: float = setting(16.0, "--train lora: scaling alpha (the update is alpha / r x B A)", low=0.0,
                                low_open=True, metavar="A", group=WHAT)
    lora_dropout: float = setting(0.0, "--train lora: dropout on the adapters' input", low=0.0, high=1.0,
                                  high_open=True, metavar="P", group=WHAT)
    lora_towers: str = setting("both", "--train lora: the towers that get adapters", choices=LORA_TOWERS,
                               group=WHAT)
    lora_lr: float = setting(5e-4, "--train lora: AdamW learning rate of the adapters", low=0.0, low_open=True,
                             metavar="LR", group=WHAT)
    # --train adapter: CLIP-Adapter (Gao et al.): x' = ratio * MLP(x) + (1 - ratio) * x on the image features.
    adapter_reduction: int = setting(4, "--train adapter: bottleneck width = feature width / this (CLIP-"
                                     "Adapter's 4)", low=1, metavar="K", group=WHAT)
    adapter_ratio: float = setting(0.2, "--train adapter: residual ratio of the adapted features (CLIP-Adapter's "
                                   "0.2)", low=0.0, high=1.0, metavar="RATIO", group=WHAT)
    adapter_lr: float = setting(1e-3, "--train adapter: AdamW learning rate of the adapter", low=0.0,
                                low_open=True, metavar="LR", group=WHAT)
    # An image-only encoder's linear head starts at zero (p_fake 0.5): at the encoder's lr it would
    # barely move, and the encoder gets no gradient until it does.
    head_lr: float = setting(1e-3, "image-only encoders (DINOv2): AdamW learning rate of the linear head",
                             low=0.0, low_open=True, metavar="LR", group=WHAT)
    # WiSE-FT: (1 - alpha) * zero-shot + alpha * fine-tuned weights, each alpha scored on validation.
    wise_ft: list[float] | None = setting(None, "WiSE-FT: mix zero-shot and fine-tuned weights at each alpha "
                                          "(e.g. 0,0.25,0.5,0.75,1), score each on validation, export the "
                                          "best (OUT/wise_ft.csv)", convert=parse_alphas, metavar="A,B,...",
                                          group=WHAT)

    def __post_init__(self) -> None:
        self.train = parse_train(self.train)
        self.wise_ft = parse_alphas(self.wise_ft)
        if self.train in ("prompt", "adapter") and self.loss == "flyp":
            self.loss = "ce"  # CoOp's and CLIP-Adapter's objective: the default loss means theirs

    @property
    def base_lr(self) -> float:
        """The peak learning rate of what trains: the added module's with --train prompt, lora, adapter."""
        return {"prompt": self.prompt_lr, "lora": self.lora_lr, "adapter": self.adapter_lr}.get(self.train, self.lr)

    def validate(self) -> FinetuneConfig:
        """Raise ValueError naming the first bad value; returns self."""
        def positive(name: str, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if (v is None and not allow_none) or (v is not None and (not isinstance(v, int) or v < 1)):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

        for name in ("epochs", "batch_size", "grad_accum", "save_every", "keep_checkpoints",
                     "eval_batch_size", "log_every"):
            positive(name)
        for name in ("max_steps", "eval_every", "patience", "stop_after", "lp_steps"):
            positive(name, allow_none=True)
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("epochs", "max_steps", "warmup_steps"):  # each epoch is at least one step
            if (getattr(self, name) or 0) > MAX_PLANNED_STEPS:
                raise ValueError(f"{name} = {getattr(self, name):,} plans more than {MAX_PLANNED_STEPS:,} steps; "
                                 "no run that long can be meant (a typo?)")
        if self.max_steps is not None and self.warmup_steps is not None:
            check_run_length(self, self.max_steps)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("weight_decay must be >= 0 and grad_clip > 0")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                             f"got {self.mixed_precision!r}")
        if self.lp_ft and self.train == "text":
            raise ValueError("lp_ft trains the text side first, then the image encoder: it needs "
                             "train=both or train=image, not train=text")
        for name in ("jpeg_prob", "blur_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        positive("n_ctx")
        if not self.prompt_lr > 0:
            raise ValueError(f"prompt_lr must be > 0, got {self.prompt_lr}")
        if self.train == "prompt" and (self.lp_ft or self.loss != "ce"):
            raise ValueError("train=prompt (CoOp) learns context vectors with the cross-entropy over the "
                             f"class prompts (loss=ce), without lp_ft; got loss={self.loss}, lp_ft={self.lp_ft}")
        if self.train == "prompt" and self.wise_ft:
            raise ValueError("wise_ft interpolates encoder weights; train=prompt leaves them unchanged")
        self._validate_added()
        self.__dict__["_validated_as"] = self._values()  # `validated()` skips a second pass over the same values
        return self

    def validated(self) -> FinetuneConfig:
        """`validate()` unless these very values were validated already (`core.config.build` does it
        when it reads them): the settings of a run are checked once."""
        return self if self.__dict__.get("_validated_as") == self._values() else self.validate()

    def _values(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    def _validate_added(self) -> None:
        """The rules of --train lora and --train adapter."""
        positive = {"lora_rank": self.lora_rank, "adapter_reduction": self.adapter_reduction}
        for name, v in positive.items():
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lora_alpha", "lora_lr", "adapter_lr", "head_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.lora_dropout < 1 or not 0 <= self.adapter_ratio <= 1:
            raise ValueError("lora_dropout must be in [0, 1) and adapter_ratio in [0, 1]")
        if self.lora_towers not in LORA_TOWERS:
            raise ValueError(f"lora_towers must be one of {', '.join(LORA_TOWERS)}, got {self.lora_towers!r}")
        if self.train in ("lora", "adapter") and self.lp_ft:
            raise ValueError(f"lp_ft switches between CLIP's towers; train={self.train} trains only its added module")
        if self.train == "adapter" and (self.loss != "ce" or self.wise_ft):
            raise ValueError("train=adapter (CLIP-Adapter) learns with the cross-entropy over the class prompts "
                             f"(loss=ce) and leaves CLIP's weights unchanged (no wise_ft); got loss={self.loss}")

    def check(self) -> None:
        """The rules that tie fields together (called by `core.config.build`)."""
        self.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with its checkpoint; a local model folder relative
        to OUT, so that a study moved mid-run (its tiny model with it) still resumes."""
        ident = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}
        return {**ident, "model": self.recorded_model()}

    def recorded_model(self) -> str:
        """`model` as the run folder records it (`core.paths.portable_path`): a Hub id unchanged."""
        return portable_path(self.model, self.out) if self.out else self.model

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinetuneConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


MAX_PLANNED_STEPS = 10**9  # ~30 years of ViT-B/32 steps on one GPU: a typo, not a plan


def check_run_length(cfg: FinetuneConfig, total_steps: int, steps_per_epoch: int | None = None) -> None:
    """Refuse a run that cannot be meant: more than 10^9 optimizer steps, or a warm-up that lasts
    the whole run (the learning rate would never reach its peak)."""
    if total_steps > MAX_PLANNED_STEPS:
        how = (f"epochs = {cfg.epochs:,} x {steps_per_epoch:,} steps per epoch" if cfg.max_steps is None
               and steps_per_epoch else f"max_steps = {total_steps:,}")
        raise ValueError(f"{how} plans {total_steps:,} optimizer steps, more than {MAX_PLANNED_STEPS:,}; "
                         "no run that long can be meant (a typo?)")
    if cfg.warmup_steps is not None and cfg.warmup_steps >= total_steps > 1:
        raise ValueError(f"warmup_steps = {cfg.warmup_steps:,} is not shorter than the run's {total_steps:,} "
                         "optimizer steps: the learning rate would never reach its peak")


NEEDS_TEXT = ("both", "text", "prompt")  # what an image-only encoder cannot train


def family_problem(cfg: FinetuneConfig, family: str | None) -> str | None:
    """Why `cfg` cannot run on a backbone of `family` ("clip", "siglip", "image"; None: not known
    before it loads), or None. Torch-free: the study grid asks before anything runs."""
    if family == "image":
        if cfg.train in NEEDS_TEXT:
            return (f"no text tower: train={cfg.train} needs one; an image-only encoder trains with train image, "
                    "lora or adapter (and a linear head)")
        if cfg.wise_ft:
            return "no text tower: wise_ft mixes with the zero-shot classifier an image-only encoder lacks"
        if cfg.lora_towers == "text":
            return "no text tower: lora_towers=text"
    if family == "siglip" and cfg.loss == "clip-label-aware":
        return "loss=clip-label-aware is CLIP's softmax loss; SigLIP fine-tunes with flyp (its sigmoid loss) or ce"
    return None


def config_changes(saved: Mapping[str, Any], current: FinetuneConfig) -> list[str]:
    """Human-readable differences between a checkpoint's config and `current` (runtime fields aside).

    A setting added after the checkpoint was written counts as unchanged while it has its default."""
    now = current.identity()
    defaults = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
    out = []
    for key in sorted(set(now) | {k for k in saved if k not in RUNTIME_FIELDS}):
        if key not in saved and key in defaults and now.get(key) == defaults[key]:
            continue
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if json.dumps(a) != json.dumps(b) and not (key == "model" and _same_folder(a, current)):
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def _same_folder(saved: Any, current: FinetuneConfig) -> bool:
    """Whether a checkpoint's recorded model names the folder `current.model` is: a record
    written as an absolute path (before records were relative), or one whose study moved."""
    if not (isinstance(saved, str) and current.out):
        return False
    now = resolve_recorded(current.model, ".")
    if now is None:
        return False
    then = resolve_recorded(saved, current.out) or find_moved(saved, current.out)
    return then is not None and then.resolve() == now


__all__ = ["ADDED_MODULES", "LOG_WITH", "NEEDS_TEXT", "family_problem", "MAX_PLANNED_STEPS", "FinetuneConfig", "LORA_TOWERS", "LOSS_NAMES", "LOSSES",
           "MIXED_PRECISION", "RUNTIME_FIELDS", "TRAIN_CHOICES", "check_run_length", "config_changes",
           "parse_alphas", "parse_train"]
