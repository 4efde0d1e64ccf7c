"""The data layer: sources, layout errors, decoding, cache, subsets, audit, summary, CLI.

Folder trees are written in tmp dirs with real (tiny) JPEGs; the real sample comes from the
`sample_dir` fixture. Everything runs offline.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifake_lib import CIFAR_CLASSES
from cifake_lib.data import load as D
from cifake_lib.data.load import (
    CifakeData,
    DataSourceError,
    Split,
    content_hashes,
    count_duplicates,
    decode_images,
    drop_duplicates,
    find_duplicates,
    format_summary,
    load_cifake,
    split_from_hf,
    stratified_subset,
    summarize,
    validation_split,
)
from cifake_lib.data.sources import (
    KAGGLE_URL,
    cifar_class_from_name,
    fetch_github,
    label_from_name,
    resolve_source,
)

# ---------------------------------------------------------------------------
# helpers: tiny CIFAKE trees
# ---------------------------------------------------------------------------


def file_name(index: int, cls: int) -> str:
    return f"{index}.jpg" if cls == 0 else f"{index} ({cls + 1}).jpg"


def jpeg_bytes(seed: int, size=(32, 32), mode="RGB", fmt="JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def make_tree(root: Path, per_class: int = 2, classes=(0, 1, 2)) -> Path:
    """{train,test}/{REAL,FAKE}/ with `per_class` JPEGs per CIFAR class; distinct random pixels."""
    seed = 0
    for split in ("train", "test"):
        for label in ("REAL", "FAKE"):
            d = root / split / label
            d.mkdir(parents=True)
            for c in classes:
                for i in range(per_class):
                    seed += 1
                    (d / file_name(i, c)).write_bytes(jpeg_bytes(seed))
    return root


def pil_array(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "cifake")


def load(src, **kw) -> CifakeData:
    kw.setdefault("val_fraction", 0)
    kw.setdefault("progress", False)
    return load_cifake(str(src), **kw)


# ---------------------------------------------------------------------------
# names and labels
# ---------------------------------------------------------------------------


def test_cifar_class_from_file_names():
    assert cifar_class_from_name("0000.jpg") == 0
    assert cifar_class_from_name("1969 (7).jpg") == 6
    assert cifar_class_from_name("train/FAKE/7 (10).jpg") == 9
    assert cifar_class_from_name("12 (2).jpeg") == 1
    assert cifar_class_from_name("5 (11).jpg") == -1
    assert cifar_class_from_name("cat.png") == -1
    assert cifar_class_from_name("5 (0).jpg") == -1


def test_label_names_map_to_one_is_fake():
    assert label_from_name("FAKE") == 1 and label_from_name("real") == 0
    with pytest.raises(ValueError, match="unknown label name 'AI'"):
        label_from_name("AI")


def test_resolve_source_kinds(tmp_path):
    assert resolve_source("hf").name == "hf:dragonintelligence/CIFAKE-image-dataset"
    assert resolve_source("hf:me/mirror").location == "me/mirror"
    assert resolve_source("kaggle").name == "kaggle:birdy654/cifake-real-and-ai-generated-synthetic-images"
    assert resolve_source("github").kind == "github"
    assert resolve_source(tmp_path).kind == "folder"
    with pytest.raises(FileNotFoundError, match=r"no-such-dir.*Kaggle"):
        resolve_source(tmp_path / "no-such-dir")


# ---------------------------------------------------------------------------
# folders and archives
# ---------------------------------------------------------------------------


def test_folder_loads_labels_classes_ids_and_pixels(tree):
    data = load(tree)
    assert data.source == str(tree.resolve()) and data.val is None
    for name, split in (("train", data.train), ("test", data.test)):
        assert split.images.shape == (12, 32, 32, 3) and split.images.dtype == np.uint8
        assert split.labels.dtype == np.int64 and split.classes.dtype == np.int64
        assert (split.labels == 1).sum() == 6
        assert sorted(set(split.classes.tolist())) == [0, 1, 2]
        for img, label, cls, rid in zip(split.images, split.labels, split.classes, split.ids, strict=True):
            assert rid.startswith(f"{name}/{'FAKE' if label else 'REAL'}/")
            assert cls == cifar_class_from_name(rid)
            np.testing.assert_array_equal(img, pil_array(tree / rid))
    assert data.formats["sizes"] == {"32x32": 24} and data.formats["modes"] == {"RGB": 24}
    assert data.skipped == [] and data.duplicates["train_test"] == 0


def _archive(src_parent: Path, out: Path) -> Path:
    if out.suffix == ".zip":
        with zipfile.ZipFile(out, "w") as zf:
            for p in sorted(src_parent.rglob("*")):
                zf.write(p, p.relative_to(src_parent).as_posix())
    else:
        with tarfile.open(out, "w:gz" if out.name.endswith(".gz") else "w") as tf:
            for p in sorted(src_parent.iterdir()):
                tf.add(p, p.name)
    return out


@pytest.mark.parametrize("archive", ["cifake.tar.gz", "cifake.tar", "cifake.zip"])
def test_nested_folder_and_archives_give_the_same_arrays(tmp_path, archive):
    outer = tmp_path / "download"
    make_tree(outer / "DATASET")
    (outer / "README.txt").write_text("not part of the layout")
    from_folder = load(outer)  # the layout is found below the folder given
    assert from_folder.train.ids[0].startswith("train/")
    path = _archive(outer, tmp_path / archive)
    from_archive = load(path)
    assert from_archive.source == str(path.resolve())
    for a, b in ((from_folder.train, from_archive.train), (from_folder.test, from_archive.test)):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.classes, b.classes)


def test_hidden_files_ignored_but_other_files_are_errors(tree):
    (tree / "train" / "REAL" / ".DS_Store").write_bytes(b"\0\1binary")
    (tree / "train" / "REAL" / "._0.jpg").write_bytes(b"mac resource fork")
    assert len(load(tree).train) == 12
    notes = tree / "train" / "FAKE" / "notes.txt"
    notes.write_text("some notes")
    with pytest.raises(ValueError, match=r"notes\.txt.*not an image file") as e:
        load(tree)
    assert str(notes) in str(e.value) and "--skip-bad" in str(e.value)
    data = load(tree, skip_bad=True)
    assert data.skipped == [str(notes)] and len(data.train) == 12


@pytest.mark.parametrize("bad", ["zero-byte", "truncated", "text"])
def test_unreadable_images_raise_naming_the_file_or_are_skipped(tree, bad):
    path = tree / "test" / "FAKE" / "7 (2).jpg"
    good = jpeg_bytes(99)
    path.write_bytes({"zero-byte": b"", "truncated": good[: len(good) // 2],
                      "text": b"this is not a JPEG\n"}[bad])
    with pytest.raises(ValueError, match="truncated or corrupt JPEG|not a readable image|empty file") as e:
        load(tree)
    assert str(path) in str(e.value) and "BytesIO" not in str(e.value)
    data = load(tree, skip_bad=True)
    assert data.skipped == [str(path)]
    assert len(data.test) == 12 and (data.test.labels == 1).sum() == 6
    assert "test/FAKE/7 (2).jpg" not in data.test.ids  # the bad file, an extra 13th image


def test_bad_member_of_an_archive_is_named(tmp_path):
    make_tree(tmp_path / "t" / "DATASET")
    (tmp_path / "t" / "DATASET" / "train" / "REAL" / "0 (3).jpg").write_bytes(b"")
    path = _archive(tmp_path / "t", tmp_path / "c.zip")
    with pytest.raises(ValueError, match=r"c\.zip:DATASET/train/REAL/0 \(3\)\.jpg: empty file"):
        load(path)
    assert load(path, skip_bad=True).skipped == [f"{path.resolve()}:DATASET/train/REAL/0 (3).jpg"]


def test_layout_errors_name_the_path_and_what_was_expected(tree, tmp_path):
    shutil.rmtree(tree / "test" / "FAKE")
    with pytest.raises(FileNotFoundError, match=r"test/FAKE: missing; expected test/REAL and test/FAKE"):
        load(tree)
    (tree / "test" / "FAKE").mkdir()
    with pytest.raises(ValueError, match=r"test/FAKE: empty"):
        load(tree)
    flat = tmp_path / "flat"
    for label in ("REAL", "FAKE"):
        (flat / label).mkdir(parents=True)
        (flat / label / "0.jpg").write_bytes(jpeg_bytes(1))
    with pytest.raises(FileNotFoundError, match=r"flat: not in the CIFAKE layout \(REAL/FAKE found directly"):
        load(flat)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: not in the CIFAKE layout.*found: nothing"):
        load(tmp_path / "empty")


def test_archive_layout_errors(tmp_path):
    make_tree(tmp_path / "t" / "DATASET")
    shutil.rmtree(tmp_path / "t" / "DATASET" / "test" / "REAL")
    with pytest.raises(FileNotFoundError, match=r"c\.tar\.gz:DATASET/test/REAL: missing"):
        load(_archive(tmp_path / "t", tmp_path / "c.tar.gz"))
    not_archive = tmp_path / "notes.txt"
    not_archive.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt: not a folder or a \.tar/\.tar\.gz/\.zip"):
        load(not_archive)


def test_other_sizes_and_modes_are_converted_and_reported(tree):
    d = tree / "train" / "REAL"
    (d / "100.png").write_bytes(jpeg_bytes(5, size=(64, 48), mode="L", fmt="PNG"))
    (d / "101.png").write_bytes(jpeg_bytes(6, mode="RGBA", fmt="PNG"))
    (d / "102.jpg").write_bytes(jpeg_bytes(7, size=(200, 120)))
    data = load(tree)
    assert data.train.images.shape == (15, 32, 32, 3)
    f = data.formats
    assert f["sizes"] == {"32x32": 25, "64x48": 1, "200x120": 1}
    assert f["modes"] == {"RGB": 25, "L": 1, "RGBA": 1} and f["converted"] == 3
    gray = data.train.images[list(data.train.ids).index("train/REAL/100.png")]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # grey stays grey in RGB


def test_decode_in_parallel_equals_serial(sample_dir):
    paths = sorted(str(p) for p in (sample_dir / "train" / "FAKE").iterdir())[:1500]
    a, errs_a, fa = decode_images(paths, progress=False, workers=1)
    b, errs_b, fb = decode_images(paths, progress=False, workers=2)
    np.testing.assert_array_equal(a, b)
    assert errs_a == errs_b == {}
    assert fa == fb == {"sizes": {"32x32": 1500}, "modes": {"RGB": 1500}, "converted": 0}


# ---------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------


def test_cache_hit_then_invalidated_when_a_file_changes(tree, monkeypatch):
    first = load(tree)
    assert first.cache_path is not None and (first.cache_path / "meta.json").is_file()
    decode = D._decode_listing

    def no_decode(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(D, "_decode_listing", no_decode)
    second = load(tree)
    assert second.cache_path == first.cache_path
    for a, b in zip(first.splits().values(), second.splits().values(), strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.ids, b.ids)
        assert not isinstance(b.images, np.memmap)  # never tied to the cache file
    changed = tree / "train" / "FAKE" / "1 (3).jpg"
    changed.write_bytes(jpeg_bytes(1234))
    with pytest.raises(AssertionError, match="decoded again"):
        load(tree)
    monkeypatch.setattr(D, "_decode_listing", decode)
    third = load(tree)
    i = list(third.train.ids).index("train/FAKE/1 (3).jpg")
    np.testing.assert_array_equal(third.train.images[i], pil_array(changed))


def test_archive_cache_and_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    make_tree(tmp_path / "t")
    path = _archive(tmp_path / "t", tmp_path / "c.tar.gz")
    first = load(path)
    monkeypatch.setattr(D, "read_archive", lambda *a, **k: pytest.fail("archive read again"))
    assert len(load(path).train) == len(first.train)
    monkeypatch.undo()
    npy = first.cache_path / "train_images.npy"
    npy.write_bytes(npy.read_bytes()[:1000])  # a damaged file: size no longer matches meta.json
    again = load(path)
    np.testing.assert_array_equal(again.train.images, first.train.images)
    os.utime(path, ns=(1, 1))  # the archive changed (new mtime): the cache no longer matches
    read, seen = D.read_archive, []
    monkeypatch.setattr(D, "read_archive", lambda *a, **k: seen.append(a) or read(*a, **k))
    load(path)
    assert seen


def test_cache_never_pickles(tree):
    data = load(tree)
    for f in data.cache_path.glob("*.npy"):
        np.load(f, allow_pickle=False)  # ids are a fixed-width unicode array, not objects
    assert np.load(data.cache_path / "train_ids.npy").dtype.kind == "U"


# ---------------------------------------------------------------------------
# subsets and validation split
# ---------------------------------------------------------------------------


def synthetic_split(n_per: int = 50, with_classes: bool = True) -> Split:
    labels = np.repeat([0, 1], 10 * n_per)
    classes = np.tile(np.repeat(np.arange(10), n_per), 2) if with_classes else np.full(len(labels), -1)
    images = np.zeros((len(labels), 32, 32, 3), np.uint8)
    images.reshape(len(labels), -1)[:, :4] = np.arange(len(labels))[:, None].view(np.uint8)[:, :4]
    return Split(images, labels, classes, [f"id{i}" for i in range(len(labels))])


def test_stratified_subset_is_balanced_seeded_and_checked():
    split = synthetic_split()
    sub = stratified_subset(split, 200, seed=3)
    assert len(sub) == 200 and (sub.labels == 1).sum() == 100
    for label in (0, 1):
        assert np.bincount(sub.classes[sub.labels == label], minlength=10).tolist() == [10] * 10
    assert list(sub.ids) == sorted(sub.ids, key=lambda s: int(s[2:]))  # original order kept
    np.testing.assert_array_equal(stratified_subset(split, 200, seed=3).ids, sub.ids)
    assert set(stratified_subset(split, 200, seed=4).ids) != set(sub.ids)
    odd = stratified_subset(split, 7, seed=0)
    assert (odd.labels == 1).sum() == 3
    with pytest.raises(ValueError, match="needs 501 REAL images, only 500"):
        stratified_subset(split, 1002)


def test_validation_split_is_stratified_disjoint_and_seeded():
    split = synthetic_split()
    train, val = validation_split(split, 0.1, seed=0)
    assert len(val) == 100 and len(train) == 900
    assert set(train.ids).isdisjoint(val.ids) and set(train.ids) | set(val.ids) == set(split.ids)
    assert (val.labels == 1).sum() == 50
    assert np.bincount(val.classes[val.labels == 1], minlength=10).tolist() == [5] * 10
    np.testing.assert_array_equal(validation_split(split, 0.1, seed=0)[1].ids, val.ids)
    assert set(validation_split(split, 0.1, seed=1)[1].ids) != set(val.ids)
    unknown = synthetic_split(with_classes=False)  # classes unknown (Hub): stratified by label only
    assert (validation_split(unknown, 0.25)[1].labels == 1).sum() == 125
    with pytest.raises(ValueError, match="val_fraction"):
        validation_split(split, 1.0)


def test_load_with_subset_and_val(tmp_path):
    big = make_tree(tmp_path / "big", per_class=10, classes=tuple(range(10)))
    data = load(big, subset=(80, 40), val_fraction=0.25, seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (60, 20, 40)
    for s in (data.train, data.val, data.test):
        assert (s.labels == 1).sum() * 2 == len(s)
    assert all(i.startswith("train/") for i in data.val.ids)  # never from test
    again = load(big, subset=(80, 40), val_fraction=0.25, seed=1)
    np.testing.assert_array_equal(again.val.ids, data.val.ids)
    with pytest.raises(ValueError, match="val_fraction"):
        load(big, val_fraction=1.5)


# ---------------------------------------------------------------------------
# audit: duplicates
# ---------------------------------------------------------------------------


def test_duplicates_counted_as_pairs_and_dedup_drops_test_copies(tree):
    def copy(src: str, dst: str) -> None:
        (tree / dst).write_bytes((tree / src).read_bytes())

    copy("train/FAKE/0 (2).jpg", "train/FAKE/1 (2).jpg")  # within train
    copy("test/FAKE/0 (3).jpg", "test/FAKE/1 (3).jpg")  # within test
    copy("train/FAKE/0.jpg", "test/FAKE/0.jpg")  # across train/test
    copy("train/FAKE/0.jpg", "test/FAKE/1.jpg")  # ... a group of three: 2 train/test pairs, 1 within test
    data = load(tree)
    assert data.duplicates == {"within_train": 1, "within_test": 2, "train_test": 2, "dropped_test": 0,
                               "dropped_val": 0}
    groups = find_duplicates(data.splits())
    assert len(groups) == 3
    ids = [sorted(str(data.splits()[s].ids[i]) for s, i in g) for g in groups]
    assert ["test/FAKE/0.jpg", "test/FAKE/1.jpg", "train/FAKE/0.jpg"] in ids
    deduped = load(tree, dedup=True)
    assert deduped.duplicates["dropped_test"] == 2 and len(deduped.test) == 10
    assert "test/FAKE/0.jpg" not in deduped.test.ids and "test/FAKE/1 (3).jpg" in deduped.test.ids
    assert deduped.duplicates["within_test"] == 2  # counted before anything is dropped


def test_hashes_and_drop_duplicates_on_arrays():
    split = synthetic_split(5)
    h = content_hashes(split.images)
    assert h.dtype == np.uint64 and len(np.unique(h)) == len(split)
    assert content_hashes(split.images[:3]).tolist() == h[:3].tolist()
    other = split.take([4, 7])
    assert len(drop_duplicates(split, [other])) == len(split) - 2
    assert drop_duplicates(split, [synthetic_split(1).take([])]) is split
    assert count_duplicates(split, other) == {"within_train": 0, "within_test": 0, "train_test": 2}


# ---------------------------------------------------------------------------
# Hugging Face Hub, Kaggle, GitHub (offline)
# ---------------------------------------------------------------------------


def hf_dataset(labels, names=("FAKE", "REAL")):
    datasets = pytest.importorskip("datasets")
    images = [Image.open(io.BytesIO(jpeg_bytes(i))) for i in range(len(labels))]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict({"image": images, "label": list(labels)}, features=feats)


@pytest.mark.parametrize("names", [("FAKE", "REAL"), ("real", "fake")])
def test_hf_labels_mapped_by_class_names_not_position(names):
    ds = hf_dataset([0, 0, 1, 1, 1], names)
    split = split_from_hf(ds, progress=False)
    fake_value = [n.upper() for n in names].index("FAKE")
    assert split.labels.tolist() == [1 if v == fake_value else 0 for v in [0, 0, 1, 1, 1]]
    assert split.ids.tolist() == ["0", "1", "2", "3", "4"] and (split.classes == -1).all()
    np.testing.assert_array_equal(split.images[2], np.asarray(ds[2]["image"].convert("RGB")))
    picked = split_from_hf(ds.select([4, 0]), progress=False)  # index mappings are respected
    np.testing.assert_array_equal(picked.images, split.images[[4, 0]])


def test_hf_rejects_unknown_label_names():
    with pytest.raises(ValueError, match="unknown label name 'cat'"):
        split_from_hf(hf_dataset([0, 1], ("cat", "dog")), progress=False)


def test_hf_parquet_round_trip_and_load_cifake_via_hub_path(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    for name, labels in (("train", [0, 0, 1, 1] * 3), ("test", [0, 1, 0, 1])):
        hf_dataset(labels).to_parquet(str(tmp_path / f"{name}.parquet"))
    dd = datasets.load_dataset("parquet", data_files={s: str(tmp_path / f"{s}.parquet") for s in ("train", "test")})
    calls = []
    monkeypatch.setattr(D, "load_hf_dataset", lambda repo: calls.append(repo) or dd)
    data = load_cifake("hf:someone/cifake-mirror", val_fraction=0.25, progress=False)
    assert calls == ["someone/cifake-mirror"] and data.source == "hf:someone/cifake-mirror"
    assert (len(data.train), len(data.val), len(data.test)) == (9, 3, 4)
    assert (data.test.labels == [1, 0, 1, 0]).all()  # stored 0 = FAKE
    s = summarize(data)
    assert s["splits"]["train"]["by_class"] == {}
    assert s["splits"]["train"]["FAKE"] + s["splits"]["val"]["FAKE"] == 6
    again = load_cifake("hf:someone/cifake-mirror", val_fraction=0, progress=False)
    assert calls == ["someone/cifake-mirror"] and len(again.train) == 12  # cached: no Hub call


def test_hub_unreachable_says_how_to_get_cifake(monkeypatch):
    pytest.importorskip("datasets")
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hub (offline)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError, match="Hugging Face Hub") as e:
        load_cifake("hf", progress=False)
    assert KAGGLE_URL in str(e.value) and "--data DIR" in str(e.value)
    assert isinstance(e.value, ValueError)  # every subcommand reports it as a user error


def test_kaggle_without_kagglehub_and_with_a_stub(tree, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)
    with pytest.raises(DataSourceError, match="pip install kagglehub"):
        load_cifake("kaggle", progress=False)
    stub = types.ModuleType("kagglehub")
    stub.dataset_download = lambda handle: str(tree.parent)  # kagglehub returns a folder above the layout
    monkeypatch.setitem(sys.modules, "kagglehub", stub)
    data = load_cifake("kaggle:someone/cifake", val_fraction=0, progress=False)
    assert data.source == "kaggle:someone/cifake" and len(data.train) == 12
    assert data.train.ids[0].startswith("train/")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_github_source_is_a_shallow_clone(tmp_path):
    repo = tmp_path / "repo"
    make_tree(repo / "DATASET", per_class=1, classes=(0,))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "data"], check=True)
    folder = fetch_github(f"file://{repo}", tmp_path / "clone")
    assert folder == tmp_path / "clone" / "DATASET" and (folder / "train" / "REAL" / "0.jpg").is_file()
    assert fetch_github(f"file://{tmp_path}/gone", tmp_path / "clone") == folder  # reused, no network
    with pytest.raises(DataSourceError, match="git clone .* failed"):
        fetch_github(f"file://{tmp_path}/gone", tmp_path / "other")


# ---------------------------------------------------------------------------
# summary and CLI
# ---------------------------------------------------------------------------


def test_summarize_and_cli_json(tree, capsys):
    from cifake_lib.app.cli import main

    assert main(["data", "--data", str(tree), "--val-fraction", "0.25", "--json"]) == 0
    out, err = capsys.readouterr()
    s = json.loads(out)  # exactly one JSON object on stdout
    assert set(s["splits"]) == {"train", "val", "test"}
    assert s["splits"]["test"]["REAL"] == 6 and s["splits"]["test"]["by_class"]["automobile"] == {"REAL": 2, "FAKE": 2}
    assert s["splits"]["train"]["total"] + s["splits"]["val"]["total"] == 12
    assert set(s["duplicates"]) >= {"within_train", "within_test", "train_test"}
    assert s["skipped"] == [] and Path(s["cache"]).is_dir() and s["seconds"] >= 0
    assert main(["data", "--data", str(tree)]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "automobile" in text and "identical images" in text
    table = format_summary(summarize(load(tree, val_fraction=0.1))).splitlines()
    assert text.splitlines()[1:] == table[1:]  # the same table (the first line has the load time)
    shutil.rmtree(tree / "train" / "REAL")
    assert main(["data", "--data", str(tree)]) == 2
    assert "train/REAL: missing" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# the real sample (7,900 CIFAKE images)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(cifake_sample) -> CifakeData:
    return load_cifake(str(cifake_sample), val_fraction=0, progress=False)


def test_sample_counts_and_every_class_recovered(sample):
    for split, per_class in ((sample.train, 295), (sample.test, 100)):
        assert (split.labels == 0).sum() == (split.labels == 1).sum() == 10 * per_class
        assert (split.classes >= 0).all()
        for label in (0, 1):
            counts = np.bincount(split.classes[split.labels == label], minlength=10)
            assert counts.tolist() == [per_class] * 10
    assert sample.formats["sizes"] == {"32x32": 7900} and sample.formats["modes"] == {"RGB": 7900}
    assert summarize(sample)["splits"]["train"]["by_class"][CIFAR_CLASSES[6]] == {"REAL": 295, "FAKE": 295}


def test_sample_known_duplicate_pairs(sample):
    assert sample.duplicates == {"within_train": 1, "within_test": 1, "train_test": 1, "dropped_test": 0,
                                  "dropped_val": 0}
    pairs = {tuple(sorted(str(sample.splits()[s].ids[i]) for s, i in g)) for g in find_duplicates(sample.splits())}
    assert pairs == {
        ("test/FAKE/970 (7).jpg", "train/FAKE/1969 (7).jpg"),
        ("train/FAKE/3941 (7).jpg", "train/FAKE/4196 (7).jpg"),
        ("test/FAKE/400 (6).jpg", "test/FAKE/90 (6).jpg"),
    }


def test_sample_study_style_subset_dedup_and_cached_reload(sample_dir, sample):
    data = load_cifake(str(sample_dir), subset=(2000, 1000), val_fraction=0.1, seed=0, dedup=True, progress=False)
    assert (len(data.train), len(data.val)) == (1800, 200)
    assert len(data.test) == 1000 - data.duplicates["dropped_test"]
    full = load_cifake(str(sample_dir), val_fraction=0.1, dedup=True, progress=False)
    assert full.duplicates["dropped_test"] == 1 and "test/FAKE/970 (7).jpg" not in full.test.ids
    assert full.cache_path == sample.cache_path and full.seconds < 5
