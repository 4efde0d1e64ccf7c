"""`cifake push --model RUN --repo ID`: a detector's run folder to the Hugging Face Hub.

The folder is first staged so that it loads on its own once downloaded: every file of the run but
its training checkpoints, and a local CLIP model it refers to outside itself (a probe's or a
zero-shot run's backbone, e.g. the smoke study's tiny model) copied in as `base_model/`, with
detector.json pointing there; a Hub id stays a Hub id. Its README.md is the model card `write_run`
wrote. Then `huggingface_hub` creates the repository (if needed) and uploads the staged folder in
one commit. `--dry-run` stages and lists what would be uploaded, and touches no network.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifake_lib.core.config import setting
from cifake_lib.core.errors import CifakeError

SKIP = ("checkpoints", "checkpoint", ".cifake", ".cifake.lock", "*.tmp", ".*.tmp")  # not needed to load a detector
BASE_DIR = "base_model"


@dataclass
class PushConfig:
    """`cifake push`: upload a detector's run folder to the Hugging Face Hub."""

    model: str = setting("", "the run folder to push (a study or zero-shot folder: the run chosen on validation)",
                         metavar="RUN", required=True)
    repo: str = setting("", "Hub repository id, e.g. you/cifake-probe (created if it does not exist)",
                        metavar="ID", required=True)
    private: bool = setting(False, "create the repository as private")
    message: str = setting("Upload a CIFAKE detector (cifake_lib)", "commit message")
    dry_run: bool = setting(False, "stage the folder and list what would be uploaded; no network")

    def check(self) -> None:
        if self.repo.count("/") != 1 or not all(self.repo.split("/")):
            raise ValueError(f"repo: expected an id like you/cifake-probe, got {self.repo!r}")


def stage(run: Path, into: Path) -> list[str]:
    """Copy the run folder `run` into `into` so that it loads on its own; returns the files, relative."""
    from cifake_lib.core.files import read_json, write_json
    from cifake_lib.methods.zeroshot import resolve_model_ref

    shutil.copytree(run, into, ignore=shutil.ignore_patterns(*SKIP), dirs_exist_ok=True)
    meta = read_json(run / "detector.json")
    if meta.get("kind") in ("clip", "probe"):
        ref = resolve_model_ref(str(meta.get("model") or ""), run)
        local = Path(ref)
        if local.is_dir() and not local.resolve().is_relative_to(run.resolve()):
            shutil.copytree(local, into / BASE_DIR, ignore=shutil.ignore_patterns(*SKIP))
            meta["model"] = BASE_DIR
    if isinstance(meta.get("base_model"), str) and Path(run, meta["base_model"]).exists():
        meta["base_model"] = Path(meta["base_model"]).name  # a note of what it was trained from, not a local path
    write_json(into / "detector.json", meta)
    return sorted(p.relative_to(into).as_posix() for p in into.rglob("*") if p.is_file())


def push(cfg: PushConfig, *, note: Any = print) -> dict[str, Any]:
    """Stage `cfg.model` and upload it to `cfg.repo` (or, with dry_run, only list it); returns
    {"run", "repo", "files", "url"} (url None on a dry run)."""
    from cifake_lib.methods.detectors import DETECTOR_FILE, resolve_detector_path

    run = resolve_detector_path(Path(cfg.model).expanduser(), note)
    if not (run / DETECTOR_FILE).is_file():
        raise CifakeError(f"--model {cfg.model}: not a run folder (no {DETECTOR_FILE}); push a folder that "
                          "`cifake predict --model` loads")
    with tempfile.TemporaryDirectory(prefix="cifake_push_") as tmp:
        staged = Path(tmp) / run.name
        files = stage(run, staged)
        if cfg.dry_run:
            return {"run": str(run), "repo": cfg.repo, "files": files, "url": None}
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        api = HfApi()
        try:
            api.create_repo(cfg.repo, private=cfg.private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(folder_path=os.fspath(staged), repo_id=cfg.repo, repo_type="model",
                                       commit_message=cfg.message)
        except OfflineModeIsEnabled:
            raise CifakeError("the Hub is offline (HF_HUB_OFFLINE=1): nothing was pushed; unset it, or try "
                              "--dry-run") from None
        except HfHubHTTPError as e:
            raise CifakeError(f"the Hub refused the push to {cfg.repo}: {e} (logged in? `hf auth login`)") from None
    return {"run": str(run), "repo": cfg.repo, "files": files, "url": str(getattr(commit, "commit_url", commit))}


__all__ = ["PushConfig", "push", "stage"]
