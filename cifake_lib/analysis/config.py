"""Settings of the analysis stages: the robustness battery and the report. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from cifake_lib.core.config import setting
from cifake_lib.methods.config import BEST_DEVICE, DEVICE_HELP


@dataclass
class RobustnessConfig:
    """`cifake robustness`: every detector under JPEG, blur, noise, rescaling and cropping."""

    runs: list[str] = setting(default_factory=list, help="run folders, or folders searched recursively for "
                              "them (a zero-shot folder contributes its best prompt set on validation)",
                              nargs="+", metavar="DIR", required=True)
    limit: int | None = setting(None, "evaluate on a stratified subset of N test images (at least 2: one "
                                "REAL and one FAKE)", low=2, metavar="N", show_default="the whole test split")
    perturbations: list[str] | None = setting(None, "comma-separated subset of the battery "
                                              "(jpeg, blur, noise, downscale, crop)", metavar="NAMES",
                                              show_default="all")
    batch_size: int = setting(256, "scoring batch size", low=1)
    device: str | None = setting(None, DEVICE_HELP, show_default=BEST_DEVICE)

    def check(self) -> None:
        if not self.runs:
            raise ValueError("runs: at least one run folder is required")
        if self.perturbations is not None:
            from cifake_lib.data.perturb import PERTURBATIONS

            unknown = [p for p in self.perturbations if p not in PERTURBATIONS]
            if unknown:
                raise ValueError(f"perturbations: unknown {unknown}; known: {', '.join(PERTURBATIONS)}")


@dataclass
class ReportConfig:
    """`cifake report`: report.md from run folders (or a whole study folder)."""

    runs: list[str] = setting(default_factory=list, help="run folders, or folders searched recursively for "
                              "them (and for robustness.json), or a `cifake run` study folder",
                              nargs="+", metavar="DIR", required=True)
    n_boot: int = setting(1000, "bootstrap resamples for the CIs of precision/recall/F1/AP/ECE", low=0)
    gallery: int = setting(8, "images per gallery row", low=1, metavar="K")
    saliency: bool = setting(True, "skip loading detectors for saliency maps")
    embeddings: int = setting(1000, "test images in the PCA/t-SNE embedding figure, pretrained vs "
                              "fine-tuned CLIP (with --data; 0: none)", low=0, metavar="N")
    device: str | None = setting(None, DEVICE_HELP + ", for saliency", show_default=BEST_DEVICE)

    def check(self) -> None:
        if not self.runs:
            raise ValueError("runs: at least one run folder is required")


@dataclass
class ReportData:
    """The report's images: `data` of `run_report(data, cfg, out)`, given as `--data`."""

    data: str | None = setting(None, "CIFAKE source whose test images the galleries and saliency maps show",
                               metavar="SRC", show_default="none, no galleries")


__all__ = ["ReportConfig", "ReportData", "RobustnessConfig"]
