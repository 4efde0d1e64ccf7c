"""README.md of a run folder: a model card, as users of transformers, open_clip and timm expect one.

`write_run` writes it beside detector.json: what the detector is, the data and split it was made
on, its test metrics with 95% intervals, its threshold, the label convention, how to load it with
cifake_lib, and its limitations. The YAML header is the Hugging Face Hub's card metadata, so the
folder reads well once pushed (`cifake push`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cifake_lib.core.formatting import format_metric

CARD = "README.md"

KIND_WORDS = {
    "clip": "a CLIP model scoring each image against text prompts for REAL and FAKE",
    "probe": "a linear probe (logistic regression) on frozen CLIP image features",
    "cnn": "the CIFAKE paper's convolutional network (Bird & Lotfi 2024), trained from scratch",
}


def _what(detector: Mapping[str, Any], model: str, tiny: bool) -> str:
    name, kind = str(detector.get("detector", "?")), str(detector.get("kind", "?"))
    text = KIND_WORDS.get(kind, f"a detector of kind {kind}")
    if name.startswith("zeroshot"):
        text = f"zero-shot CLIP (no training) with the `{name.split(':', 1)[-1]}` prompt set"
    elif name.startswith("finetune"):
        text = (f"CLIP fine-tuned on CIFAKE (`{name}`, loss {detector.get('loss', '?')}), scoring images "
                "against its label prompts")
    base = detector.get("base_model") or (model if kind in ("clip", "probe") else None)
    if base:
        where = " (relative to this folder)" if str(base).startswith(".") else ""
        text += f", built on `{base}`{where}" + (" (a tiny CLIP with random weights)" if tiny else "")
    return text[:1].upper() + text[1:]


def _metrics_table(m: Mapping[str, Any]) -> str:
    natural = (m.get("natural_threshold") or {}).get("accuracy")
    rows = [("accuracy (at the threshold)", format_metric(m.get("accuracy"), m.get("accuracy_ci95"), percent=True)),
            ("`acc@0.5` (at p_fake ≥ 0.5)", format_metric(natural, percent=True) if natural is not None else "—"),
            ("ROC AUC", format_metric(m.get("roc_auc"), m.get("roc_auc_ci95")) if m.get("roc_auc") is not None
             else "—")]
    rows += [(k, format_metric(m[k])) for k in ("precision", "recall", "f1", "ece") if m.get(k) is not None]
    return "| test metric | value [95% CI] |\n|---|---:|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def _data_text(m: Mapping[str, Any], args: Mapping[str, Any], metrics_val: Mapping[str, Any] | None) -> str:
    subset = args.get("subset")
    part = (f"a {subset[0]:,}/{subset[1]:,}-image (train/test) subset" if isinstance(subset, (list, tuple))
            and len(subset) == 2 else "the whole of it as loaded")
    val = f", validation {metrics_val['n']:,} images (fraction {args.get('val_fraction', '?')} of train)" \
        if metrics_val and metrics_val.get("n") else ""
    return (f"CIFAKE from `{m.get('data')}`, {part}, seed {args.get('seed', m.get('seed'))}{val}; test "
            f"{m.get('n', 0):,} images ({m.get('n_real', 0):,} REAL, {m.get('n_fake', 0):,} FAKE).")


def model_card(folder_name: str, *, metrics: Mapping[str, Any], detector: Mapping[str, Any], model: str,
               args: Mapping[str, Any], metrics_val: Mapping[str, Any] | None = None, tiny: bool = False) -> str:
    """The README.md text of a run folder named `folder_name` (see the module docstring)."""
    name = str(detector.get("detector", "detector"))
    t = float(metrics["threshold"])
    source = metrics.get("threshold_source", "val")
    chosen = "chosen on validation: it maximises validation accuracy" if source == "val" else f"{source}"
    warning = ("\n> **Pipeline check, not a detector to use.** This folder was made with a tiny randomly "
               "initialised CLIP: its numbers check that the pipeline runs, not how well CLIP detects "
               "generated images.\n" if tiny else "")
    tags = "\n".join(f"- {t_}" for t_ in ["ai-generated-image-detection", "cifake", "image-classification"]
                     + (["clip"] if detector.get("kind") in ("clip", "probe") else []))
    return f"""---
library_name: cifake_lib
tags:
{tags}
datasets:
- CIFAKE
metrics:
- accuracy
- roc_auc
---

# {name}: a CIFAKE detector
{warning}
**What it is.** {_what(detector, model, tiny)}. It gives each image `p_fake`, the probability that the image
is AI-generated.

**Labels.** 1 = FAKE (AI-generated; in CIFAKE, Stable Diffusion 1.4), 0 = REAL (CIFAR-10 photographs). FAKE is
the positive class of every metric.

**Data and split.** {_data_text(metrics, args, metrics_val)} Everything chosen (threshold, prompt set, C, early
stopping) was chosen on validation data; the test split gave the numbers below only.

**Threshold.** {t:.4f} ({chosen}): p_fake ≥ {t:.4f} means FAKE.

{_metrics_table(metrics)}
Intervals: 95% bootstrap over the test images. `metrics.json` has every figure, `predictions.csv` every test
image's p_fake, `run.json` the settings, versions and hardware.

## Use it

```python
import cifake_lib as cl

detector = cl.load_detector("{folder_name}")          # this folder
p_fake = cl.predict(detector, ["image.png", "photo.jpg"])  # numpy array, one p_fake per image
is_fake = p_fake >= detector.threshold
```

From the command line: `cifake predict --model {folder_name} image.png` prints one JSON line per image
with `p_fake`, the threshold and the label. A copy on the Hugging Face Hub: download it with
`huggingface_hub.snapshot_download(repo_id)` and pass that folder to `cl.load_detector`.

## Limitations

- CIFAKE's images are 32×32; its FAKE images come from one generator (Stable Diffusion 1.4), its REAL ones
  from CIFAR-10. Larger images are resized to the model's input; other generators, other content and
  compression are not covered by these numbers.
- The test metrics are on CIFAKE's test split as scored here; CIFAKE holds byte-identical images across train
  and test (`cifake evaluate --dedup` scores the leak-free split).
- A threshold chosen on CIFAKE's validation split need not suit another distribution of images.
"""


__all__ = ["CARD", "model_card"]
