"""Nothing overwritten, nothing half-trusted: the reliability campaign's failures, each with its outcome.

User files in `--out` are refused (`--overwrite` to allow); damaged, cut and pickled weights are
one line naming the file (exit 2); resume walks back to the newest checkpoint that loads; write
errors name the path; a Hub id without the Hub fails in seconds, a missing folder at once;
settings that cannot be meant are refused; one study at a time per folder; detector.json
fields named; a forged decode-cache entry is not taken for the source. Fixtures are made here.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import make_tree

from cifake_lib.app.cli import main as cli_main
from cifake_lib.core import lock as L
from cifake_lib.core.outdir import MARKER, OutputRefused, claim_output
from cifake_lib.core.weights import DamagedWeights, check_safetensors, load_torch_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(*argv: str) -> int:
    return cli_main([str(a) for a in argv])


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "cifake")


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(path)
    return path


def user_folder(path: Path) -> Path:
    """A folder of someone's own files, as the campaign made it."""
    path.mkdir(parents=True)
    (path / "metrics.json").write_text('{"mine": true}\n')
    (path / "notes.txt").write_text("my notes\n")
    return path


# ---------------------------------------------------------------------------
# 1. Never overwrite what the project did not write
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["cnn", "finetune"])
def test_a_stage_refuses_a_folder_of_user_files(command, tree, tmp_path, capsys):
    out = user_folder(tmp_path / "mine")
    extra = ["--epochs", "1"] if command == "cnn" else ["--max-steps", "1", "--cpu", "--quiet"]
    assert cli(command, "--data", tree, "--out", out, *extra) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: holds files this project did not write (metrics.json, notes.txt)" in err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "metrics.json").read_text() == '{"mine": true}\n' and not (out / MARKER).exists()


def test_run_report_and_tiny_model_follow_the_same_rule(tmp_path, tiny_model_dir, capsys):
    for argv in (["run", "--preset", "smoke", "--out"], ["report", "--runs", str(tmp_path), "--out"], ["tiny-model"]):
        out = user_folder(tmp_path / f"mine_{argv[0]}")
        assert cli(*argv, out) == 2, argv
        assert "holds files this project did not write" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "notes.txt"]
    # --overwrite writes into it (and marks it); a folder the project wrote is used as it is
    out = tmp_path / "mine_tiny-model"
    assert cli("tiny-model", out, "--overwrite") == 0
    assert (out / "config.json").is_file() and (out / MARKER).is_file() and (out / "notes.txt").is_file()
    assert cli("tiny-model", out) == 0


def test_a_finished_run_of_other_settings_is_replaced_only_with_overwrite(tree, tiny_model_dir, tmp_path, capsys):
    """The same command again re-runs into its folder; another model or subset would mix two runs'
    files in one folder, so it is refused, naming what differs, unless --overwrite."""
    out = tmp_path / "probe"
    probe = ["probe", "--data", tree, "--model", tiny_model_dir, "--out", out, "--quiet"]
    assert cli(*probe) == 0 and cli(*probe) == 0
    before = (out / "metrics.json").read_text()
    capsys.readouterr()
    assert cli(*probe, "--val-fraction", "0.5") == 2
    err = capsys.readouterr().err
    assert "holds a finished `cifake probe` run made with other settings (val_fraction: 0.1 -> 0.5)" in err
    assert "--overwrite" in err and (out / "metrics.json").read_text() == before
    assert cli(*probe, "--val-fraction", "0.5", "--overwrite") == 0


def test_claim_accepts_new_empty_and_own_folders(tmp_path):
    assert claim_output(tmp_path / "new" / "deep").is_dir()
    (tmp_path / "empty").mkdir()
    assert (claim_output(tmp_path / "empty") / MARKER).is_file()
    old = tmp_path / "old_run"  # written before the marker existed: its run.json says whose it is
    old.mkdir()
    (old / "run.json").write_text("{}")
    (old / "metrics.json").write_text("{}")
    claim_output(old)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputRefused, match="a file, not a folder"):
        claim_output(tmp_path / "file")


# ---------------------------------------------------------------------------
# 2. One safe loader: damaged, cut, pickled, wrong-shape weights
# ---------------------------------------------------------------------------


def _cnn_run(folder: Path) -> Path:
    from cifake_lib.methods.cnn import CifakeCNN, CNNConfig, save_cnn_weights

    folder.mkdir(parents=True)
    cfg = CNNConfig()
    torch.manual_seed(0)
    save_cnn_weights(CifakeCNN(cfg), folder / "cnn.safetensors")
    meta = {"kind": "cnn", "detector": "cnn", "weights": "cnn.safetensors", "architecture": cfg.to_dict(),
            "threshold": 0.5}
    (folder / "detector.json").write_text(json.dumps(meta))
    return folder


def _pickle_bytes() -> bytes:
    return pickle.dumps({"w": Path("never-unpickled")})  # a class weights_only refuses


@pytest.mark.parametrize("damage,message", [
    ("truncate", r"cnn\.safetensors: truncated safetensors file"),
    ("pickle", r"cnn\.safetensors: a pickle or torch\.save file, not safetensors"),
    ("torch_save", r"cnn\.pt: a pickle or torch\.save file, not safetensors"),
    ("shape", r"cnn\.safetensors: the weights do not fit the model \(.*size mismatch"),
])
def test_damaged_cnn_weights_are_one_line_naming_the_file(damage, message, tmp_path, image, capsys):
    run = _cnn_run(tmp_path / "cnn")
    weights = run / "cnn.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "pickle":
        weights.write_bytes(_pickle_bytes())
    elif damage == "torch_save":
        torch.save({"x": torch.zeros(2)}, run / "cnn.pt")
        meta = json.loads((run / "detector.json").read_text())
        (run / "detector.json").write_text(json.dumps({**meta, "weights": "cnn.pt"}))
    else:
        meta = json.loads((run / "detector.json").read_text())
        meta["architecture"]["dense"] = 32
        (run / "detector.json").write_text(json.dumps(meta))
    for argv in (["predict", "--model", run, image],
                 ["evaluate", "--model", run, "--data", make_tree(tmp_path / "d"), "--out", tmp_path / "ev"]):
        assert cli(*argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert re.search(message, err), err


def test_a_cut_fine_tuned_model_folder_is_named_before_transformers_opens_it(tmp_path, tiny_model_dir, image,
                                                                             capsys):
    from cifake_lib.clip.models import load_clip

    model = tmp_path / "model"
    model.mkdir()
    for f in tiny_model_dir.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(DamagedWeights, match=r"model\.safetensors: truncated safetensors file"):
        load_clip(model, device="cpu")
    assert cli("predict", "--model", model, image) == 2
    assert "model.safetensors: truncated" in capsys.readouterr().err


def test_clip_weights_of_another_shape_are_one_line_naming_the_folder(tmp_path, tiny_model_dir, image, capsys):
    model = tmp_path / "model"
    model.mkdir()
    for f in tiny_model_dir.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    config = json.loads((model / "config.json").read_text())
    config["projection_dim"] = 32  # the file's projections are 64 wide
    (model / "config.json").write_text(json.dumps(config))
    assert cli("predict", "--model", model, image) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("cifake predict: error: --model ") and "the weights do not fit the folder's config.json" in last
    assert "tensor shapes differ" in last


def test_the_safe_loader_never_unpickles(tmp_path):
    bomb = tmp_path / "opt.pt"
    bomb.write_bytes(pickle.dumps(os.getcwd) + b"")  # a global: refused by weights_only, never called
    for mmap in (False, True):  # resume checks optimizer.pt memory-mapped: a pickle is named as one there too
        with pytest.raises(DamagedWeights, match=r"opt\.pt: refused: not a plain tensor file"):
            load_torch_file(bomb, mmap=mmap)
    torch.save({"a": torch.ones(3)}, tmp_path / "ok.pt")
    assert torch.equal(load_torch_file(tmp_path / "ok.pt")["a"], torch.ones(3))
    cut = tmp_path / "cut.pt"
    cut.write_bytes((tmp_path / "ok.pt").read_bytes()[:-40])
    for mmap in (False, True):
        with pytest.raises(DamagedWeights, match=r"cut\.pt: damaged or truncated"):
            load_torch_file(cut, mmap=mmap)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(DamagedWeights, match="no header"):
        check_safetensors(tmp_path / "empty.safetensors")


# ---------------------------------------------------------------------------
# 3. Resume walks back to the newest checkpoint that loads
# ---------------------------------------------------------------------------


def _ft(tiny_model_dir, out, **kw):
    from test_finetune import _cfg

    return _cfg(tiny_model_dir, out, max_steps=4, save_every=1, **kw)


@pytest.mark.parametrize("damage", ["model.safetensors", "optimizer.pt", "rng.pt"])
def test_resume_walks_back_past_a_damaged_latest_checkpoint(damage, tiny_model_dir, tmp_path, capsys):
    from test_finetune import _data, _weights

    from cifake_lib.methods.finetune import train

    data = _data(n_val=0)
    straight = train(data, _ft(tiny_model_dir, tmp_path / "straight"))
    cfg = _ft(tiny_model_dir, tmp_path / "split", stop_after=2)
    assert train(data, cfg).status == "stopped"
    bad = Path(cfg.out) / "checkpoints" / "step-0000002" / damage
    if damage == "model.safetensors":
        bad.write_bytes(bad.read_bytes()[:-500])
    else:
        bad.write_bytes(_pickle_bytes())
    capsys.readouterr()
    resumed = train(data, replace(cfg, resume=True, stop_after=None))
    err = capsys.readouterr().err
    assert "resuming from step-0000001, the newest checkpoint that loads; skipped step-0000002" in err
    why = "truncated safetensors file" if damage == "model.safetensors" else "refused: not a plain tensor file"
    assert f"{damage}: {why}" in err
    assert resumed.step == straight.step == 4
    a, b = _weights(tmp_path / "straight" / "model" / "model.safetensors"), _weights(Path(cfg.out) / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the walk back costs a step, not exactness


# ---------------------------------------------------------------------------
# 4. Write errors named
# ---------------------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path):
    """A folder that refuses writes even to root: a read-only tmpfs when this process may mount one."""
    d = tmp_path / "ro"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({r.stderr.decode().strip()}); the mapping of "
                    "EROFS is tested with a patched write in test_write_errors_are_one_line_naming_the_path")
    yield d
    subprocess.run(["umount", str(d)], capture_output=True)


def test_a_read_only_out_is_one_line_for_cnn_and_run(read_only, tree, capsys):
    for argv in (["cnn", "--data", tree, "--epochs", "1", "--out", read_only / "cnn"],
                 ["run", "--preset", "smoke", "--data", tree, "--out", read_only / "study"]):
        assert cli(*argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith("the file system is read-only; choose another --out or fix its permissions"), err
        assert str(read_only) in err and len(err.splitlines()) == 1


def test_write_errors_are_one_line_naming_the_path(tree, tmp_path, monkeypatch, capsys):
    import errno

    from cifake_lib.methods import cnn

    # a path under a file: refused for root too
    (tmp_path / "afile").write_text("x")
    assert cli("cnn", "--data", tree, "--epochs", "1", "--out", tmp_path / "afile" / "out") == 2
    assert "a part of the path is a file, not a folder" in capsys.readouterr().err

    def refused(*a, **k):  # what a disk that turns read-only mid-run says
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "cnn" / "cnn.safetensors"))

    monkeypatch.setattr(cnn, "save_cnn_weights", refused)
    assert cli("cnn", "--data", tree, "--epochs", "1", "--batch-size", "8", "--out", tmp_path / "cnn") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"cifake cnn: error: cannot write {tmp_path / 'cnn' / 'cnn.safetensors'}: the file system is "
                   "read-only; choose another --out or fix its permissions")


# ---------------------------------------------------------------------------
# 5. Offline fast, missing folders at once
# ---------------------------------------------------------------------------


@pytest.fixture
def hub_unreachable(monkeypatch):
    """HF_HUB_OFFLINE unset, and a Hub endpoint that never resolves (RFC 2606 .invalid)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_a_hub_id_without_the_hub_fails_in_seconds_from_every_command(hub_unreachable, tree, image, tmp_path,
                                                                       capsys):
    from huggingface_hub import constants

    for argv in (["predict", "--model", "someone/no-such-clip", image],
                 ["zeroshot", "--data", tree, "--model", "someone/no-such-clip", "--out", tmp_path / "zs"],
                 ["probe", "--data", tree, "--model", "someone/no-such-clip", "--out", tmp_path / "pr"]):
        t0 = time.perf_counter()
        assert cli(*argv) == 2, argv
        seconds = time.perf_counter() - t0
        err = capsys.readouterr().err
        assert "the Hugging Face Hub cannot be reached and it is not in the local cache" in err, err
        assert "Traceback" not in err and seconds < 15, (argv[0], seconds)
    assert constants.HF_HUB_OFFLINE is False  # offline only while loading


def test_a_path_like_model_that_does_not_exist_is_no_such_folder_at_once(tree, image, tmp_path, monkeypatch,
                                                                          capsys):
    """Every command with a model option fails in a second, before it loads data or claims --out."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    for model in ("smoke/nonexistent", "./nothing", "~/no/such/model", "a/b/c"):
        for argv in (["predict", "--model", model, image],
                     *[[stage, "--data", tree, "--model", model, "--out", tmp_path / stage]
                       for stage in ("zeroshot", "probe", "finetune", "evaluate")],
                     ["run", "--preset", "smoke", "--data", tree, "--model", model, "--out", tmp_path / "run"]):
            t0 = time.perf_counter()
            assert cli(*argv) == 2
            assert time.perf_counter() - t0 < 5, argv
            err = capsys.readouterr().err
            assert f"{model}: no such folder" in err and "Hub" not in err.split("no such folder")[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a mistyped model created an output folder"
    for stage in ("robustness", "report"):
        assert cli(stage, "--runs", "smoke/nonexistent", "--out", tmp_path / stage) == 2
        assert "--runs smoke/nonexistent: no such file or folder" in capsys.readouterr().err
        assert not (tmp_path / stage).exists()


# ---------------------------------------------------------------------------
# 6. Settings that cannot be meant
# ---------------------------------------------------------------------------


def test_an_empty_stage_list_is_refused(tmp_path, capsys):
    cfg = tmp_path / "none.toml"
    cfg.write_text("[run]\nstages = []\n")
    t0 = time.perf_counter()
    assert cli("run", "--preset", "smoke", "--config", cfg, "--out", tmp_path / "s", "--print-config") == 2
    assert "stages is empty: nothing would run" in capsys.readouterr().err and time.perf_counter() - t0 < 5


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "1000000000000"], r"epochs = 1,000,000,000,000 plans more than 1,000,000,000 steps"),
    (["--max-steps", "2000000000"], r"max_steps = 2,000,000,000 plans more than"),
    (["--max-steps", "10", "--warmup-steps", "10"], r"warmup_steps = 10 is not shorter than the run's 10"),
    (["--epochs", "2", "--warmup-steps", "100"], r"warmup_steps = 100 is not shorter than the run's 2"),
    (["--epochs", "500000000", "--batch-size", "4"], r"epochs = 500,000,000 x 3 steps per epoch plans"),
])
def test_absurd_run_lengths_are_refused_naming_the_setting(argv, message, tree, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    assert cli("finetune", "--data", tree, "--model", tiny_model_dir, "--out", out, "--cpu", "--quiet",
               "--val-fraction", "0", *(["--batch-size", "12"] if "--batch-size" not in argv else []), *argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (out / "checkpoints").exists()


# ---------------------------------------------------------------------------
# 7. One study at a time per folder
# ---------------------------------------------------------------------------


def _lock_of(out: Path, pid: int, host: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    (out / L.LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                               "command": "cifake run", "since": "2026-01-01T00:00:00"}))


def test_a_second_run_on_a_locked_folder_exits_2_naming_the_holder(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "study"
        _lock_of(out, holder.pid)
        assert cli("run", "--preset", "smoke", "--out", out) == 2
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid} (cifake run, since 2026-01-01T00:00:00)" in err
        assert f"delete {out / L.LOCK_FILE} if that process is gone" in err
        assert json.loads((out / L.LOCK_FILE).read_text())["pid"] == holder.pid  # left alone
        _lock_of(out, 12345, host="another-machine")  # cannot be checked from here: refused too
        with pytest.raises(L.FolderLocked, match="on host another-machine"):
            L.acquire(out)
        with pytest.MonkeyPatch.context() as m:
            m.setenv("RANK", "1")  # a second process of one `accelerate launch`: its rank 0 holds the lock
            with L.study_lock(out):
                pass
        assert json.loads((out / L.LOCK_FILE).read_text())["host"] == "another-machine"
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_warning_and_released(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs: a kill -9'd study
    out = tmp_path / "study"
    _lock_of(out, gone.pid)
    with caplog.at_level("WARNING", logger="cifake_lib"), L.study_lock(out, "cifake run") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with L.study_lock(out):  # nested (a stage inside run): same holder
            pass
        assert path.exists()
    assert f"left by process {gone.pid}, which is gone" in caplog.text
    assert not (out / L.LOCK_FILE).exists()
    (out / L.LOCK_FILE).write_text("")  # torn: its writer died mid-write
    with L.study_lock(out):
        pass


def test_two_processes_racing_for_one_folder_one_wins(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    code = ("import sys, time; from cifake_lib.core.lock import study_lock\n"
            "try:\n    with study_lock(sys.argv[1]):\n        time.sleep(5)\n    print('ran')\n"
            "except Exception as e:\n    print('refused', e)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent) for _ in range(2)]
    outs = sorted(p.communicate(timeout=60)[0].split()[0] for p in procs)
    assert outs == ["ran", "refused"]


# ---------------------------------------------------------------------------
# 8. detector.json fields named
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,message", [
    ("channels", [32, -1], "channels must be >= 1, got -1"),
    ("dense", 0, "dense must be >= 1, got 0"),
    ("kernel_size", "3x3", "kernel_size must be an integer"),
    ("depth", 3, "unknown setting 'depth'"),
])
def test_bad_cnn_architecture_names_file_and_field(field, value, message, tmp_path, image, capsys):
    run = _cnn_run(tmp_path / "cnn")
    meta = json.loads((run / "detector.json").read_text())
    meta["architecture"][field] = value
    (run / "detector.json").write_text(json.dumps(meta))
    assert cli("predict", "--model", run, image) == 2
    err = capsys.readouterr().err
    assert f'detector.json: "architecture": {message}' in err and "negative dimension" not in err, err


# ---------------------------------------------------------------------------
# 9. A forged decode-cache entry does not pass for the source
# ---------------------------------------------------------------------------


def test_flipped_labels_with_a_recomputed_checksum_are_not_trusted(tree, caplog):
    from cifake_lib.data import cache as C
    from cifake_lib.data.load import load_cifake

    fresh = load_cifake(str(tree), val_fraction=0, progress=False)
    folder = fresh.cache_path
    meta = json.loads((folder / C.META).read_text())
    for name in ("train_labels", "test_labels"):  # the forger's edit, checksums and sizes recomputed
        path = folder / f"{name}.npy"
        flipped = 1 - np.load(path)
        np.save(path, flipped)
        meta["files"][path.name] = {"bytes": path.stat().st_size, "checksum": C.checksum(flipped, meta["checksum"])}
    (folder / C.META).write_text(json.dumps(meta))
    assert C.read_arrays(folder, meta["fingerprint"], ["train_labels"]) is not None  # the checksum alone passes it
    with caplog.at_level("WARNING"):
        again = load_cifake(str(tree), val_fraction=0, progress=False)
    assert "does not match the source's files" in caplog.text and "label or class differs" in caplog.text
    assert np.array_equal(again.train.labels, fresh.train.labels) and np.array_equal(again.test.labels,
                                                                                     fresh.test.labels)


def test_forged_pixels_are_caught_by_the_random_spot_check(tree, caplog):
    from cifake_lib.data import cache as C
    from cifake_lib.data.load import load_cifake

    fresh = load_cifake(str(tree), val_fraction=0, progress=False)
    folder = fresh.cache_path
    meta = json.loads((folder / C.META).read_text())
    path = folder / "test_images.npy"
    forged = 255 - np.load(path)  # every test image replaced; labels and ids untouched
    np.save(path, forged)
    meta["files"][path.name] = {"bytes": path.stat().st_size, "checksum": C.checksum(forged, meta["checksum"])}
    (folder / C.META).write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        again = load_cifake(str(tree), val_fraction=0, progress=False)
    assert "the cached pixels differ from the file's" in caplog.text
    assert np.array_equal(again.test.images, fresh.test.images)


def test_an_untouched_cache_is_still_used(tree, caplog):
    from cifake_lib.data.load import load_cifake

    load_cifake(str(tree), val_fraction=0, progress=False)
    with caplog.at_level("INFO", logger="cifake_lib.data.load"):
        load_cifake(str(tree), val_fraction=0, progress=False)
    assert "CIFAKE from cache" in caplog.text and "does not match" not in caplog.text

