"""Fine-tuning a backbone on CIFAKE: FLYP, its CE ablation, CoOp prompt tuning, LoRA, CLIP-Adapter,
WiSE-FT; checkpoints and resume. A package: the model (`model.py`), the losses (`losses.py`),
building a run and exporting it (`setup.py`), the loop (`loop.py`), the stage (`stage.py`), the
training-curve trackers (`trackers.py`); this module gives their public names.

The losses (`loss`), named for what they are:

- "flyp" (default): FLYP (Goyal et al., "Finetune like you pretrain", CVPR 2023; locuslab/FLYP
  `src/models/flyp_loss.py`, open_clip's ClipLoss). Each image is paired with a caption of its
  label: one of the prompt set's templates for that label, drawn per image and epoch (seeded),
  with the image's CIFAR class filled in where the set has `{class}` templates. Loss: the
  symmetric in-batch contrastive loss, image->text and text->image, `arange` targets, the learned
  logit scale clamped at 100; both encoders learn. A SigLIP backbone is fine-tuned with its own
  pre-training loss instead, the pairwise sigmoid loss (`losses.siglip_loss`), on the same pairs. Same-label captions in a batch are negatives,
  as on FLYP's own binary tasks (PatchCamelyon, SST2). The text tower encodes only the batch's
  distinct captions. With several processes, each process's shard is its in-batch set.
- "ce": CE over the averaged class prompts. FLYP's CE ablation (`src/models/ce_ablation.py`) draws
  one random template per class at each step; ours averages every template instead: the text encoder
  embeds every prompt of the set (each label's templates encoded, normalised,
  averaged, normalised again: the zero-shot head of `clip.head`), and

      logits = logit_scale * cos(image, label embedding)       (B, 2): REAL, FAKE
      loss   = cross_entropy(logits, label)                     label 1 = FAKE

- "clip-label-aware": the in-batch CLIP loss with targets spread over every caption of the label.

An image-only backbone (DINOv2) has no text tower: `train` image, lora or adapter trains it with a
linear head on its L2-normalised embedding (cross-entropy), exported as a linear probe on the
fine-tuned features (detector.json kind "probe"); both, text, prompt and WiSE-FT need a text tower.

Whatever the loss, a fine-tuned dual encoder stays a zero-shot classifier: `zeroshot.ClipDetector`
with the run's prompts scores it (validation during training, the run's metrics after), and
that is what the run exports (detector.json kind "clip", the model in OUT/model/). Class-aware
prompt sets use each image's own CIFAR class when it is known and the log-mean-exp over classes
otherwise (`clip.head.ZeroShotHead`). detector.json records the loss, a methods paragraph
(`methods_text`) and our settings beside FLYP's own (`hyperparameters_vs_flyp`: FLYP uses
batch 512/256, 500 warm-up steps, a cosine to 0, AdamW (0.9, 0.999), eps 1e-8; ours and why).

`train="prompt"`: CoOp (Zhou et al., IJCV 2022; `clip.coop`): n_ctx context vectors shared by
both labels before the label word, CLIP frozen and byte-identical, the cross-entropy over the
two label prompts. AdamW at `prompt_lr` (default 2e-3) against CoOp's SGD at 2e-3 (momentum 0.9):
AdamW needs no momentum or gradient-scale tuning across models, and the loop already uses it.
The context is saved as OUT/prompt_context.safetensors, read back by `ClipDetector.from_run`.

`wise_ft=[alphas]`: WiSE-FT (Wortsman et al., CVPR 2022; `methods.wise_ft`) after training:
each mix of the starting and the fine-tuned weights scored on validation, OUT/wise_ft.csv, the
best validation AUC exported as OUT/model/ (`wise_ft_alpha` in detector.json).

LP-FT (Kumar et al. 2022), for CLIP: the "linear head" of a CLIP classifier is its class text
embeddings. With `lp_ft`, a first phase (`lp_steps`, default 10% of the run) trains only the
text side (text encoder, text projection, logit scale) with the image encoder frozen, i.e. it
fits the head on fixed image features; the second phase trains what `train` says. Each phase
has its own warm-up and cosine decay (two runs back to back).

The loop (`train`) reads top to bottom: `build` (model, optimiser, accelerator) and `resume`
(the newest checkpoint's state, RNG and optimiser), then per step: the epoch's order,
`train_step` (forward, loss, backward over the micro-batches, NaN checks, clipping, the update),
log, `evaluate` (validation; export the best model; patience), `checkpoint`. Where the run is
lives in one `training.TrainState`. It runs through Hugging Face Accelerate, so one code path
serves CPU, one GPU and several: every process draws the same seeded permutation and takes its
shard of each batch, and validation is scored shard by shard and gathered, so every process
takes the same decisions. Data stay a uint8 array; a batch is gathered by index, augmented on
uint8 (`perturb.augment_batch`), moved to the device and preprocessed there (`ImagePreprocessor`).

    accelerate launch --multi_gpu --num_processes 2 -m cifake_lib finetune ...        # 2 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m cifake_lib finetune --cpu ...  # 2 CPU processes (gloo)
    torchrun --standalone --nproc_per_node 2 -m cifake_lib finetune ...                # the same with torchrun

(`accelerate launch --cpu --num_processes 2` starts several CPU processes only through MPI;
without an MPI host file it runs one process.) Gradient accumulation is explicit (`no_sync` on
all micro-batches but the last), so the loop can check the loss before the optimizer steps.

Checkpoints (OUT/checkpoints/step-XXXXXXX/, written to a .tmp folder then renamed, newest K
kept): model.safetensors (CoOp: the context vectors only), optimizer.pt and scaler.pt (tensors and plain containers only, read
back with torch.load(weights_only=True)), rng.pt, history.json and state.json (step, epoch,
position in the epoch, seed, best validation AUC, patience, the config). Nothing is pickled.
"""

from cifake_lib.clip.head import prompt_index
from cifake_lib.methods.checkpoints import (
    TrainingDiverged,
    export_model,
    latest_checkpoint,
    list_checkpoints,
    save_checkpoint,
)
from cifake_lib.methods.finetune import loop, losses, model, setup, stage
from cifake_lib.methods.finetune.loop import (
    TrainOutcome,
    get_lr,
    phase_at,
    schedule_phases,
    train,
    train_step,
)
from cifake_lib.methods.finetune.losses import (
    caption_choices,
    ce_loss,
    compute_loss,
    draw_captions,
    flyp_loss,
    label_aware_clip_loss,
    siglip_loss,
)
from cifake_lib.methods.finetune.model import (
    ClassifierOutput,
    ClipClassifier,
    LinearHead,
    param_groups,
    predict_logits,
    resolve_prompts,
    set_trainable,
    validation_scores,
)
from cifake_lib.methods.finetune.setup import (
    _OOM as _OOM,  # noqa: PLC0414 (tests raise it)
)
from cifake_lib.methods.finetune.setup import (
    FINETUNED_DIR,
    MAX_LOGIT_SCALE,
    MODEL_DIR,
    PROBE_FILE,
    OutOfMemory,
    build,
    checked,
    epoch_permutation,
    resolve_mixed_precision,
    tower_compile_mode,
)
from cifake_lib.methods.finetune.stage import (
    CE_TEXT,
    CE_VARIANT,
    CURVES_FILE,
    FinetuneResult,
    apply_wise_ft,
    evaluate_run,
    finetune,
    hyperparameters_vs_flyp,
    load_history,
    methods_text,
    run,
)
from cifake_lib.methods.finetune_config import (
    LOSS_NAMES,
    LOSSES,
    FinetuneConfig,
    config_changes,
    parse_train,
)
from cifake_lib.methods.training import TrainState
from cifake_lib.viz.run_figures import (
    training_curves_figure,  # notebook 03 draws the curves with it
)

__all__ = [
    "CE_TEXT",
    "CE_VARIANT",
    "CURVES_FILE",
    "FINETUNED_DIR",
    "LOSSES",
    "LOSS_NAMES",
    "MAX_LOGIT_SCALE",
    "MODEL_DIR",
    "PROBE_FILE",
    "ClassifierOutput",
    "ClipClassifier",
    "FinetuneConfig",
    "FinetuneResult",
    "LinearHead",
    "OutOfMemory",
    "TrainOutcome",
    "TrainState",
    "TrainingDiverged",
    "apply_wise_ft",
    "build",
    "caption_choices",
    "ce_loss",
    "checked",
    "compute_loss",
    "config_changes",
    "draw_captions",
    "epoch_permutation",
    "evaluate_run",
    "export_model",
    "finetune",
    "flyp_loss",
    "get_lr",
    "hyperparameters_vs_flyp",
    "label_aware_clip_loss",
    "latest_checkpoint",
    "list_checkpoints",
    "load_history",
    "losses",
    "loop",
    "methods_text",
    "model",
    "param_groups",
    "parse_train",
    "phase_at",
    "predict_logits",
    "prompt_index",
    "resolve_mixed_precision",
    "resolve_prompts",
    "run",
    "save_checkpoint",
    "schedule_phases",
    "set_trainable",
    "setup",
    "siglip_loss",
    "stage",
    "tower_compile_mode",
    "train",
    "train_step",
    "training_curves_figure",
    "validation_scores",
]
