"""Whether a study's numbers say anything about CLIP on CIFAKE, or only check the pipeline.

A study run on a tiny randomly initialised CLIP (`cifake tiny-model`, the smoke preset: its
folder holds `TINY_MODEL.json`) or on a subset of CIFAKE checks that every stage runs and that
its statistics are computed; its accuracies are not CLIP's, and published results (measured on
all 20,000 test images with real weights) are context for it, not a comparison. `Scale` says
which of the two a study is, from its runs (`study_scale`) or from its settings (`settings_scale`,
what study.json records), and gives the words the report and notebook 04 use for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifake_lib.core.backbones import TINY_MARK
from cifake_lib.core.paths import find_moved, resolve_recorded

FULL_TEST = 20_000  # CIFAKE's test split: 10,000 REAL + 10,000 FAKE
# A leak-free re-scoring of the whole test split drops the test images that also occur in train
# (a few hundred in CIFAKE); a test set smaller than this is a part of CIFAKE's, whatever its dedup.
WHOLE_TEST = FULL_TEST - 1_000
FULL_TRAIN = 100_000


def _tiny_what(folders: Sequence[str]) -> str:
    """"CLIP", or the families of several tiny models ("CLIP, SigLIP and DINOv2"), from their marks."""

    names = {"clip": "CLIP", "siglip": "SigLIP", "dinov2": "DINOv2"}
    found = []
    for f in folders:
        try:
            family = json.loads((Path(f).expanduser() / TINY_MARK).read_text()).get("family", "clip")
        except (OSError, ValueError, AttributeError):
            family = "clip"
        found.append(names.get(family, family))
    found = list(dict.fromkeys(found)) or ["CLIP"]
    return found[0] if len(found) == 1 else ", ".join(found[:-1]) + " and " + found[-1]


def is_tiny_model(ref: Any) -> bool:
    """Whether `ref` is a local model folder holding `TINY_MODEL.json` (random weights)."""
    if not isinstance(ref, str) or not ref:
        return False
    try:
        return (Path(ref).expanduser() / TINY_MARK).is_file()
    except OSError:
        return False


@dataclass(frozen=True)
class Scale:
    """What makes a study a pipeline check: random tiny models, a subset, a part of the test split."""

    tiny_models: tuple[str, ...] = ()  # model folders with random weights
    subset: tuple[int, int] | None = None  # (train, test) of the data settings
    test_images: int | None = None  # test images scored (before deduplication), when fewer than CIFAKE's

    @property
    def reduced(self) -> bool:
        """True when the numbers are not those of pretrained models on the whole of CIFAKE."""
        return bool(self.tiny_models or self.subset or self.test_images)

    @property
    def pipeline_check(self) -> bool:
        """True when a model has random weights: the numbers check the pipeline, not CLIP."""
        return bool(self.tiny_models)

    def what(self) -> str:
        """"a tiny randomly initialised CLIP and a 1,600/400-image subset of CIFAKE" (empty: neither)."""
        parts = []
        if self.tiny_models:
            parts.append("a tiny randomly initialised " + _tiny_what(self.tiny_models) + " (no pretrained weights)")
        if self.subset:
            parts.append(f"a {self.subset[0]:,}/{self.subset[1]:,}-image (train/test) subset of CIFAKE")
        elif self.test_images:
            parts.append(f"{self.test_images:,} of CIFAKE's {FULL_TEST:,} test images")
        return " and ".join(parts)

    def short(self) -> str:
        """A few words for captions: "pipeline check: tiny random CLIP, 1,600/400 subset"."""
        parts = ([f"tiny random {_tiny_what(self.tiny_models)}"] if self.tiny_models else []) + (
            [f"{self.subset[0]:,}/{self.subset[1]:,} subset"] if self.subset else
            [f"{self.test_images:,} test images"] if self.test_images else [])
        if not parts:
            return ""
        return ("pipeline check: " if self.pipeline_check else "subset of CIFAKE: ") + ", ".join(parts)

    def banner(self) -> str:
        """The Markdown banner at the top of report.md and notebook 04 (empty for a full study)."""
        if self.pipeline_check:
            return (f"> **Pipeline check, not a result.** These numbers come from {self.what()}. They show that "
                    "every stage runs and that its statistics are computed; they say nothing about how well CLIP "
                    "detects CIFAKE's generated images. Published results appear as context only, not as a "
                    "comparison. Run the `report` preset (pretrained CLIP, the whole of CIFAKE) for results.\n")
        if self.reduced:
            return (f"> **A subset of CIFAKE.** These detectors were trained and tested on {self.what()}, not on "
                    f"CIFAKE's {FULL_TRAIN:,} training and {FULL_TEST:,} test images; their intervals are wider "
                    "accordingly. Published results, measured on the whole test set, appear as context only.\n")
        return ""

    def caption(self) -> str:
        """One italic line under every table and figure of a reduced study (empty otherwise)."""
        if not self.reduced:
            return ""
        short = self.short()
        tail = "not the detectors' performance on CIFAKE" if self.pipeline_check else "not the whole of CIFAKE"
        return f"_{short[:1].upper() + short[1:]}: {tail}._\n"

    def record(self) -> dict[str, Any]:
        """study.json's "scale"."""
        return {"pipeline_check": self.pipeline_check, "subset_of_cifake": self.reduced and not self.pipeline_check, "tiny_models": list(self.tiny_models),
                "subset": list(self.subset) if self.subset else None, "test_images": self.test_images,
                "note": self.what() or "pretrained model(s), the whole of CIFAKE"}


def _subset(args: Mapping[str, Any] | None) -> tuple[int, int] | None:
    value = (args or {}).get("subset")
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def _run_models(run: Mapping[str, Any]) -> list[str]:
    """The model folders a run used, resolved against its folder: its model and its base model."""
    folder = Path(str(run.get("path") or "."))
    det = run.get("detector") or {}
    refs = [(run.get("metrics") or {}).get("model"), det.get("base_model")]
    return [str(resolve_recorded(r, folder) or r) for r in refs if isinstance(r, str) and r]


def study_scale(runs: Iterable[Mapping[str, Any]]) -> Scale:
    """The scale of the runs a report reads (read_run dicts; originals, not leak-free re-scorings)."""
    tiny: list[str] = []
    subset, most = None, 0
    for r in runs:
        tiny += [m for m in _run_models(r) if is_tiny_model(m) and m not in tiny]
        subset = subset or _subset((r.get("run") or {}).get("args")) or _subset((r.get("metrics") or {}).get("args"))
        m = r.get("metrics_original") or r.get("metrics") or {}
        most = max(most, int(m.get("n") or 0))
    partial = most if 0 < most < WHOLE_TEST and subset is None else None
    return Scale(tiny_models=tuple(tiny), subset=subset, test_images=partial)


def with_study_models(scale: Scale, roots: Iterable[str | os.PathLike]) -> Scale:
    """`scale` with the tiny models every study folder's study.json names: a grid's other backbones
    (tiny SigLIP, DINOv2), whose runs the main cell's detectors do not use."""
    tiny = list(scale.tiny_models)
    for root in roots:
        try:
            named = json.loads((Path(root) / "study.json").read_text(encoding="utf-8"))["scale"]["tiny_models"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for m in named or []:
            found = resolve_recorded(str(m), root) or find_moved(str(m), root, accept=lambda p: (p / TINY_MARK).is_file())
            if found is not None and str(found) not in tiny and (found / TINY_MARK).is_file():
                tiny.append(str(found))
    return dataclasses.replace(scale, tiny_models=tuple(tiny))


def settings_scale(models: Sequence[str], subset: Sequence[int] | None) -> Scale:
    """The scale of a study from its settings (`cifake run` writes it into study.json)."""
    return Scale(tiny_models=tuple(m for m in models if is_tiny_model(m)),
                 subset=(int(subset[0]), int(subset[1])) if subset else None)


__all__ = ["FULL_TEST", "TINY_MARK", "Scale", "is_tiny_model", "settings_scale", "study_scale", "with_study_models"]
