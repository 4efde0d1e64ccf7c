"""Bad input, faults and interruptions: each gives a clear error (CLI exit 2) or its documented outcome.

Damaged and cut archives, archive bombs (declared sizes, not real gigabytes), 16-bit and other
image modes, stale or damaged caches, links, bad detector.json, pickle-only model folders, full
disks (a small tmpfs where this process may mount one, else a patched write) and file modes.
Every fixture is generated here.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import struct
import subprocess
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import file_name, jpeg_bytes, make_tree

from cifake_lib.app.cli import main as cli_main
from cifake_lib.core.errors import CifakeError, NoSpaceLeft, is_disk_full, out_of_memory_kind
from cifake_lib.core.files import write_json
from cifake_lib.data import cache as C
from cifake_lib.data.decode import ImageDecodeError, decode_image
from cifake_lib.data.load import load_cifake
from cifake_lib.data.sources import MAX_MEMBER_BYTES, ArchiveError
from cifake_lib.methods.predict import read_image


def load(src, **kw):
    kw.setdefault("val_fraction", 0)
    kw.setdefault("progress", False)
    return load_cifake(str(src), **kw)


def tar_of(tree: Path, out: Path, mode: str = "w") -> Path:
    with tarfile.open(out, mode) as tf:
        tf.add(tree, arcname="DATASET")
    return out


def zip_of(tree: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(tree.rglob("*")):
            zf.write(p, "DATASET/" + p.relative_to(tree).as_posix())
    return out


def member_offsets(path: Path) -> list[tuple[int, str]]:
    with tarfile.open(path) as tf:
        return [(m.offset, m.name) for m in tf.getmembers()]


def cli(*argv: str) -> int:
    return cli_main(list(argv))


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "cifake")


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a tiny tmpfs (256 KiB) when this process may mount one, else None."""
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        yield None
        return
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


# ---------------------------------------------------------------------------
# 1. Archives are read whole or refused
# ---------------------------------------------------------------------------


def test_tar_with_a_damaged_header_at_90_percent_is_refused(tree, tmp_path, capsys):
    path = tar_of(tree, tmp_path / "c.tar")
    offsets = member_offsets(path)
    offset, name = offsets[int(0.9 * len(offsets))]
    raw = bytearray(path.read_bytes())
    raw[offset + 148:offset + 156] = b"garbage!"  # the header checksum field
    path.write_bytes(bytes(raw))
    for skip_bad in (False, True):  # damage is never skippable: the rest of the archive is lost
        with pytest.raises(ArchiveError, match=rf"c\.tar: damaged archive: the member header at byte {offset:,}"):
            load(path, skip_bad=skip_bad)
    assert cli("data", "--data", str(path)) == 2
    assert "damaged archive" in capsys.readouterr().err


@pytest.mark.parametrize("cut", ["member boundary", "inside a member"])
def test_cut_tar_is_refused(tree, tmp_path, cut):
    path = tar_of(tree, tmp_path / "c.tar")
    offset, _ = member_offsets(path)[-3]
    raw = path.read_bytes()
    path.write_bytes(raw[:offset] if cut == "member boundary" else raw[:offset + 512 + 100])
    with pytest.raises(ArchiveError, match=r"c\.tar: damaged archive: .*(cut short|ends at byte)"):
        load(path)


def test_truncated_tar_gz_names_the_archive(tree, tmp_path, capsys):
    path = tar_of(tree, tmp_path / "c.tar.gz", "w:gz")
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * 0.6)])
    with pytest.raises(ArchiveError, match=r"c\.tar\.gz: damaged archive"):
        load(path)
    assert cli("data", "--data", str(path)) == 2
    err = capsys.readouterr().err
    assert "c.tar.gz: damaged archive" in err and "Traceback" not in err


def test_whole_archives_load_and_corrupt_gzip_data_is_caught(tree, tmp_path):
    good = tar_of(tree, tmp_path / "c.tar.gz", "w:gz")
    assert len(load(good).train) == 12
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped bit of compressed data: zlib or the CRC catches it
    bad = tmp_path / "d.tar.gz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match=r"d\.tar\.gz: damaged archive"):
        load(bad)


def test_cut_or_corrupt_zip_is_refused(tree, tmp_path):
    path = zip_of(tree, tmp_path / "c.zip")
    raw = path.read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(raw[: len(raw) // 2])  # the central directory is at the end
    with pytest.raises(ArchiveError, match=r"cut\.zip: damaged archive: its zip central directory"):
        load(cut)
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(".jpg"))
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    flipped = bytearray(raw)
    flipped[data_start + 5] ^= 0xFF
    bad = tmp_path / "crc.zip"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ArchiveError, match=r"crc\.zip: damaged archive: member " + re.escape(info.filename)):
        load(bad)


# ---------------------------------------------------------------------------
# 2. Bounded archive reads (bombs with declared sizes, never real gigabytes)
# ---------------------------------------------------------------------------


def _declare_zip_size(path: Path, member: str, size: int) -> None:
    """Rewrite a member's uncompressed size in the zip's central directory (what zipfile trusts)."""
    raw = bytearray(path.read_bytes())
    name = member.encode()
    pos = raw.index(b"PK\x01\x02")
    while True:
        n = struct.unpack_from("<H", raw, pos + 28)[0]
        if raw[pos + 46:pos + 46 + n] == name:
            struct.pack_into("<I", raw, pos + 24, size)
            break
        pos = raw.index(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(raw))


def test_zip_member_declaring_2_gib_is_refused_before_reading(tree, tmp_path):
    path = zip_of(tree, tmp_path / "c.zip")
    _declare_zip_size(path, "DATASET/train/REAL/0.jpg", 2**31)
    with pytest.raises(ArchiveError, match=r"c\.zip:DATASET/train/REAL/0\.jpg: declares 2,147,483,648 bytes"):
        load(path)


def test_members_outside_the_image_folders_are_never_read(tree, tmp_path):
    (tree / "README_bomb.txt").write_bytes(b"x" * 100)
    path = zip_of(tree, tmp_path / "c.zip")
    _declare_zip_size(path, "DATASET/README_bomb.txt", 2**31)  # reading it would fail its CRC or size check
    data = load(path)
    assert len(data.train) == 12 and data.skipped == []


def test_highly_compressed_members_are_refused(tree, tmp_path):
    zeros = bytes(5 * 2**20)  # 5 MiB of zeros deflate ~1000:1, far beyond any image
    (tree / "train" / "REAL" / "bomb.jpg").write_bytes(zeros)
    with pytest.raises(ArchiveError, match=r"c\.zip:DATASET/train/REAL/bomb\.jpg: compressed .*:1.*over the 100:1"):
        load(zip_of(tree, tmp_path / "c.zip"))
    big = bytes(20 * 2**20)
    (tree / "train" / "REAL" / "bomb.jpg").write_bytes(big)
    with pytest.raises(ArchiveError, match=r"bomb\.jpg: compressed .*over the 100:1"):
        load(tar_of(tree, tmp_path / "c.tar.gz", "w:gz"))


def test_tar_gz_member_declaring_2_gib_is_refused(tree, tmp_path):
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(tree, arcname="DATASET")
        info = tarfile.TarInfo("DATASET/train/REAL/huge.jpg")
        info.size = 2**31
        tf.fileobj.write(info.tobuf(tf.format, tf.encoding, tf.errors))  # the header only
        tf.offset += 512
    with pytest.raises(ArchiveError, match=rf"huge\.jpg: declares 2,147,483,648 bytes, over the {MAX_MEMBER_BYTES:,}"):
        load(path)


# ---------------------------------------------------------------------------
# 3. One decoder, every mode (the loader and predict agree)
# ---------------------------------------------------------------------------


def _png_rgb16(arr16: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = arr16.shape
    raw = b"".join(b"\0" + arr16[i].astype(">u2").tobytes() for i in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _gray8() -> np.ndarray:
    return (np.arange(32 * 32).reshape(32, 32) * 7 % 160).astype(np.uint8)  # mean 79.5, like the report


def _mode_cases() -> dict[str, tuple[bytes, np.ndarray]]:
    """{name: (file bytes, the 8-bit RGB pixels it should decode to)}."""
    g = _gray8()
    rgb = np.stack([g, 255 - g, g // 2], axis=-1)
    gray3 = np.repeat(g[..., None], 3, axis=2)

    def save(im: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    bilevel = (g > 80).astype(np.uint8) * 255
    palette = Image.fromarray(rgb).quantize(16)
    rgba = np.dstack([rgb, np.where(np.arange(32) < 16, 255, 0)[None, :].repeat(32, 0).astype(np.uint8)])
    white_where_clear = np.where(rgba[..., 3:] == 255, rgb, 255).astype(np.uint8)
    la = Image.fromarray(np.dstack([g, np.full_like(g, 255)]), "LA")
    return {
        "I;16 png": (save(Image.fromarray(g.astype(np.uint16) * 257), "PNG"), gray3),
        "I;16 tiff": (save(Image.fromarray(g.astype(np.uint16) * 257), "TIFF"), gray3),
        "I": (save(Image.fromarray(g.astype(np.int32) * 257), "TIFF"), gray3),
        "F": (save(Image.fromarray(g.astype(np.float32) / 255), "TIFF"), gray3),
        "1": (save(Image.fromarray(bilevel).convert("1"), "PNG"), np.repeat(bilevel[..., None], 3, axis=2)),
        "L": (save(Image.fromarray(g), "PNG"), gray3),
        "LA": (save(la, "PNG"), gray3),
        "P": (save(palette, "PNG"), np.asarray(palette.convert("RGB"))),
        "RGBA": (save(Image.fromarray(rgba, "RGBA"), "PNG"), white_where_clear),
        "CMYK": (save(Image.fromarray(rgb).convert("CMYK"), "TIFF"),
                 np.asarray(Image.fromarray(rgb).convert("CMYK").convert("RGB"))),
        "RGB 16-bit png": (_png_rgb16(rgb.astype(np.uint16) * 257), rgb),
    }


@pytest.mark.parametrize("case", list(_mode_cases()))
def test_every_mode_decodes_to_the_expected_pixels_in_loader_and_predict(case, tree, tmp_path):
    data, expected = _mode_cases()[case]
    ext = ".tif" if "tiff" in case or case in ("I", "F", "CMYK") else ".png"
    target = tree / "train" / "REAL" / f"0{ext}"
    (tree / "train" / "REAL" / "0.jpg").unlink()
    target.write_bytes(data)
    assert np.abs(decode_image(data).astype(int) - expected).max() <= 1
    from_predict = read_image(target)
    loaded = load(tree)
    from_loader = loaded.train.images[list(loaded.train.ids).index(f"train/REAL/0{ext}")]
    assert np.array_equal(from_loader, from_predict)  # training data and prediction agree
    if case.startswith("I;16"):
        assert abs(from_loader.mean() - 79.5) < 1  # not the near-white of convert("RGB")


def test_undecodable_files_are_named_never_as_bytesio(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"^x\.jpg: not a readable image") as e:
        decode_image(b"GIF8 but no image", "x.jpg")
    assert "BytesIO" not in str(e.value)
    with pytest.raises(ImageDecodeError, match="^y.jpg: truncated or corrupt"):
        decode_image(jpeg_bytes(0)[:200], "y.jpg")


# ---------------------------------------------------------------------------
# 4. A cache that can be trusted
# ---------------------------------------------------------------------------


def _fresh_labels(tree: Path) -> np.ndarray:
    return load(tree).train.labels


@pytest.mark.parametrize("damage", ["ten flipped labels", "all labels FAKE"])
def test_damaged_cache_is_named_and_rebuilt(tree, damage, caplog):
    first = load(tree)
    npy = first.cache_path / "train_labels.npy"
    labels = np.load(npy)
    labels = 1 - labels if damage == "ten flipped labels" else np.ones_like(labels)
    if damage == "ten flipped labels":
        labels[10:] = np.load(npy)[10:]
    np.save(npy, labels)  # same size, shape and dtype
    with caplog.at_level(logging.WARNING):
        again = load(tree)
    assert "train_labels.npy does not match its" in caplog.text and str(first.cache_path) in caplog.text
    assert np.array_equal(again.train.labels, first.train.labels)
    meta = json.loads((first.cache_path / "meta.json").read_text())
    assert meta["checksum"] == C.hash_name() and len(meta["files"]) == 8


def test_checksum_is_over_the_contents():
    a = np.arange(12, dtype=np.int64)
    b = a.copy()
    b[3] = 99
    for algorithm in ("blake2b-128",) + (("xxh3_128",) if C.xxhash is not None else ()):
        assert C.checksum(a, algorithm) == C.checksum(a.copy(), algorithm)
        assert C.checksum(a, algorithm) != C.checksum(b, algorithm)
        assert C.checksum(a, algorithm) != C.checksum(a.reshape(3, 4), algorithm)


def test_a_failed_file_is_tried_again_after_it_is_fixed(tree):
    path = tree / "train" / "FAKE" / file_name(0, 1)
    good = path.read_bytes()
    st = path.stat()
    path.write_bytes(b"\0" * len(good))  # broken, same size ...
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and same time: the fingerprint cannot tell
    broken = load(tree, skip_bad=True)
    assert broken.skipped == [str(path)]
    path.write_bytes(good)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    fixed = load(tree)  # would raise if the cached failure were replayed
    assert fixed.skipped == [] and "train/FAKE/" + file_name(0, 1) in fixed.train.ids


def test_failed_cache_write_leaves_nothing_behind(tree, small_disk, monkeypatch, caplog):
    if small_disk is None:  # no tmpfs here: make the third array write fail as a full disk does
        calls = {"n": 0}
        real = C._save_npy

        def full(path, array):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(path, array)

        monkeypatch.setattr(C, "_save_npy", full)
        monkeypatch.setenv("CIFAKE_CACHE", str(tree.parent / "cache"))
        root = tree.parent / "cache"
    else:  # 24 images (72 KB of pixels) and their ids do not fit with the filler
        (small_disk / "filler").write_bytes(bytes(200 * 1024))
        monkeypatch.setenv("CIFAKE_CACHE", str(small_disk / "cache"))
        root = small_disk / "cache"
    with caplog.at_level(logging.WARNING):
        data = load(tree)
    assert len(data.train) == 12 and data.cache_path is None
    assert "removed what was written" in caplog.text
    assert not list(root.rglob("*.npy")) and not list(root.rglob("meta.json"))


# ---------------------------------------------------------------------------
# 5. Links and unexpected folders
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["loop", "dangling"])
def test_bad_links_are_named_and_skippable(tree, link, capsys):
    bad = tree / "train" / "REAL" / "9.jpg"
    if link == "loop":
        os.symlink("9.jpg", bad)
    else:
        os.symlink("missing.jpg", bad)
    want = "symbolic link loop" if link == "loop" else "dangling symbolic link -> missing.jpg"
    with pytest.raises(ValueError, match=want):
        load(tree)
    assert load(tree, skip_bad=True).skipped == [str(bad)]
    assert cli("data", "--data", str(tree)) == 2
    assert want in capsys.readouterr().err
    assert cli("data", "--data", str(tree), "--skip-bad") == 0


def test_a_link_loop_beside_real_and_fake_is_named(tree):
    os.symlink("loop", tree / "train" / "loop")
    with pytest.raises(ValueError, match=r"train/loop: symbolic link loop"):
        load(tree)


@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_unexpected_folders_beside_real_and_fake(tree, tmp_path, kind):
    (tree / "train" / "OTHER").mkdir()
    (tree / "train" / "OTHER" / "5.jpg").write_bytes(jpeg_bytes(500))
    (tree / "test" / "fake").mkdir()
    (tree / "test" / "fake" / "5.jpg").write_bytes(jpeg_bytes(501))
    src = tree if kind == "folder" else zip_of(tree, tmp_path / "c.zip")
    with pytest.raises(ValueError, match=r"train/OTHER: unexpected beside REAL and FAKE") as e:
        load(src)
    assert "test/fake: a second" in str(e.value) and "differ only in case" in str(e.value)
    data = load(src, skip_bad=True)
    assert sorted(Path(s).name for s in data.skipped) == ["OTHER", "fake"]
    assert len(data.test) == 12 and len(data.train) == 12  # only FAKE, not fake, was read


# ---------------------------------------------------------------------------
# 6. Validated detector.json, model folders
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,message", [
    ("threshold", [1, 2], "a finite number in"),
    ("threshold", float("nan"), "a finite number in"),
    ("threshold", 1.5, "a finite number in"),
    ("threshold", "0.5", "a finite number in"),
    ("threshold", True, "a finite number in"),
    ("model", 7, "a string"),
    ("weights", "../../etc/passwd", "a file name inside the run folder"),
    ("use_known_class", "yes", "true or false"),
    ("prompts", ["a photo"], "a prompt set name"),
    ("marginal", "median", "one of"),
])
def test_bad_detector_json_is_refused_naming_file_and_field(tmp_path, field, value, message, capsys):
    from cifake_lib.methods.detectors import load_detector

    run = tmp_path / "run"
    meta = {"kind": "clip", "detector": "zeroshot:plain", "model": "model", "prompts": "plain",
            "threshold": 0.5, field: value}
    run.mkdir()
    (run / "detector.json").write_text(json.dumps(meta))  # NaN is written as NaN, as json allows
    with pytest.raises(CifakeError, match=rf"detector\.json: \"{field}\" is .*expected {message}"):
        load_detector(run)
    img = tmp_path / "a.png"
    Image.fromarray(_gray8()).save(img)
    assert cli("predict", "--model", str(run), str(img)) == 2
    assert "detector.json" in capsys.readouterr().err


def test_unknown_detector_kind_is_refused(tmp_path):
    from cifake_lib.methods.detectors import load_detector

    (tmp_path / "detector.json").write_text(json.dumps({"kind": "svm", "threshold": 0.5}))
    with pytest.raises(CifakeError, match=r"detector\.json: unknown detector kind 'svm'; expected one of clip"):
        load_detector(tmp_path)


def test_pickle_only_model_folder_is_refused_with_how_to_convert(tmp_path, tiny_model_dir, capsys):
    from cifake_lib.methods.detectors import load_detector

    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in tiny_model_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            (folder / f.name).write_bytes(f.read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 never unpickled")
    with pytest.raises(CifakeError, match="only pickle weights found.*cifake loads safetensors only.*save_pretrained"):
        load_detector(folder)
    img = tmp_path / "a.png"
    Image.fromarray(_gray8()).save(img)
    assert cli("predict", "--model", str(folder), str(img)) == 2
    assert "only pickle weights found" in capsys.readouterr().err


def test_finetune_from_a_cnn_run_is_a_clear_error(tree, tmp_path, capsys):
    run = tmp_path / "cnn_run"
    run.mkdir()
    write_json(run / "detector.json", {"kind": "cnn", "weights": "cnn.safetensors", "threshold": 0.5})
    code = cli("finetune", "--data", str(tree), "--model", str(run), "--out", str(tmp_path / "ft"),
               "--max-steps", "1", "--batch-size", "4", "--cpu", "--quiet")
    assert code == 2
    assert "a cnn run folder (detector.json), not a CLIP model" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# 7. Full disk, out of memory
# ---------------------------------------------------------------------------


def _checkpoint(out: Path, step: int, width: int):
    from cifake_lib.methods.checkpoints import save_checkpoint

    model = torch.nn.Linear(width, width)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, width)).sum().backward()
    opt.step()
    return save_checkpoint(out, clip=model, optimizer=opt, scaler=None, state={"step": step}, history=[], keep=3)


def test_full_disk_during_a_checkpoint_names_the_last_complete_step(small_disk, tmp_path, monkeypatch):
    out = (small_disk or tmp_path) / "run"
    _checkpoint(out, 1, 8)
    if small_disk is None:  # what torch.save says when the disk fills mid-write
        def full(*a, **k):
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 611776 vs 611664")

        monkeypatch.setattr(torch, "save", full)
    with pytest.raises(NoSpaceLeft, match=r"no space left writing .*step-0000002\.tmp/\S+; last complete "
                                          r"checkpoint step 1 .*free space and re-run with --resume"):
        _checkpoint(out, 2, 256)  # 256x256 weights + AdamW moments: ~790 KB, more than the disk
    assert not (out / "checkpoints" / "step-0000002.tmp").exists()  # the partial folder is removed


def test_out_of_memory_kinds_and_the_finetune_message_names_the_batch_size():
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you "
                       "tried to allocate 7516192768 bytes. Error code 12 (Cannot allocate memory)")
    assert out_of_memory_kind(cpu) == "CPU"
    assert out_of_memory_kind(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")) == "CUDA"
    assert out_of_memory_kind(MemoryError()) == "CPU"
    assert out_of_memory_kind(RuntimeError("shape mismatch")) is None
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_cpu_out_of_memory_in_finetune_names_the_batch_size(tiny_model_dir, tmp_path, monkeypatch):
    from test_finetune import _cfg, _data

    from cifake_lib.methods import finetune as F

    def no_memory(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(F.loop, "compute_loss", no_memory)  # what train_step calls
    with pytest.raises(F.OutOfMemory, match=r"CPU out of memory during training with --batch-size 16"):
        F.train(_data(n_val=0), _cfg(tiny_model_dir, tmp_path / "oom", max_steps=1))


# ---------------------------------------------------------------------------
# 8. File modes follow the umask
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_follow_the_umask(tree, tmp_path, mask, monkeypatch):
    monkeypatch.setenv("CIFAKE_CACHE", str(tmp_path / f"cache{mask:o}"))
    want = 0o666 & ~mask
    with umask(mask):
        write_json(tmp_path / "m.json", {"a": 1})
        data = load(tree)
        ckpt = _checkpoint(tmp_path / "run", 1, 4)
    files = [tmp_path / "m.json", *data.cache_path.iterdir(), *ckpt.iterdir()]
    assert len(files) > 10
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(want)}


# ---------------------------------------------------------------------------
# 9. Counts: CIFAKE-looking sources that fall short are reported
# ---------------------------------------------------------------------------


def test_a_cifake_looking_source_short_of_the_full_counts_warns(tree, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        data = load(tree)
    assert data.warnings and "train REAL 6 of 50,000" in data.warnings[0] and "looks like CIFAKE" in caplog.text
    # logged once as it loaded: the summary printed next (notebook 01) does not repeat it; the JSON keeps it
    from cifake_lib.data.load import format_summary, summarize

    assert "looks like CIFAKE" not in format_summary(summarize(data))
    assert summarize(data)["warnings"] == data.warnings
    other = tmp_path / "other"
    for split in ("train", "test"):
        for label in ("REAL", "FAKE"):
            (other / split / label).mkdir(parents=True)
            (other / split / label / "img_a.png").write_bytes(jpeg_bytes(7, fmt="PNG"))
    assert load(other).warnings == []
