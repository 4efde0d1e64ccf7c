"""Learning-curve subsets (`train_size`) and the validation split's deduplication against train."""

from __future__ import annotations

import numpy as np
import pytest

from cifake_lib.data.config import DataConfig, load_data
from cifake_lib.data.load import (
    Split,
    content_hashes,
    drop_duplicates,
    load_cifake,
    nested_train_subset,
)


def _split(n_per_label: int = 300, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    n = 2 * n_per_label
    images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    labels = np.repeat([0, 1], n_per_label)
    classes = rng.integers(0, 10, n)  # uneven class counts, as a stratification test needs
    return Split(images, labels, classes, [f"r{i}" for i in range(n)])


def test_nested_subsets_contain_the_smaller_ones_and_are_stratified():
    split = _split()
    sizes = [10, 32, 99, 200, 600]
    sets = [set(nested_train_subset(split, n, seed=3).ids) for n in sizes]
    for small, large in zip(sets, sets[1:], strict=False):
        assert small < large
    for n in sizes:
        sub = nested_train_subset(split, n, seed=3)
        assert len(sub) == n and int(sub.labels.sum()) == n // 2
        for label, k in ((0, n - n // 2), (1, n // 2)):
            pool = split.classes[split.labels == label]
            got = sub.classes[sub.labels == label]
            for c in range(10):
                share = (pool == c).mean() * k
                assert abs((got == c).sum() - share) < 1 + 1e-9, (n, label, c)
    assert nested_train_subset(split, None) is split
    assert set(nested_train_subset(split, 99, seed=4).ids) != sets[2]  # the seed matters
    assert set(nested_train_subset(split, 99, seed=3).ids) == sets[2]  # ... and fixes the choice
    with pytest.raises(ValueError, match="needs 301 REAL"):
        nested_train_subset(split, 601)


def test_validation_twins_of_train_images_are_dropped():
    split = _split(50)
    twin = split.images.copy()
    twin[1::2] = twin[0::2]  # row 2k+1 is a pixel copy of row 2k
    split = Split(twin, split.labels, split.classes, split.ids)
    in_val = np.array([0, 1, 4, 9, 10])  # 0 and 1 are twins of each other; 4, 9, 10 have theirs in train
    val, train = split.take(in_val), split.take(np.setdiff1d(np.arange(100), in_val))
    assert list(drop_duplicates(val, [train]).ids) == ["r0", "r1"]


def test_load_keeps_one_validation_split_for_every_train_size(sample_dir):
    runs = {n: load_data(DataConfig(data=str(sample_dir), subset=(1200, 200), val_fraction=0.2, seed=1,
                                    train_size=n, dedup=True), progress=False)
            for n in (40, 200, None)}
    base = runs[None]
    for n, d in runs.items():
        assert list(d.val.ids) == list(base.val.ids) and list(d.test.ids) == list(base.test.ids)
        assert len(d.train) == (n or len(base.train))
    assert set(runs[40].train.ids) < set(runs[200].train.ids) < set(base.train.ids)
    assert not set(base.val.ids) & set(base.train.ids)


def test_load_drops_validation_images_with_a_twin_in_train(cifake_sample):
    sample_dir = cifake_sample
    # The sample holds one pair of identical train files; with seed 1 the split puts one in each side.
    data = load_cifake(sample_dir, val_fraction=0.5, seed=1, progress=False)
    assert data.duplicates["within_train"] == 1 and data.duplicates["dropped_val"] == 1
    train_bytes = {im.tobytes() for im in data.train.images}  # oracle: no val image equals a train image
    assert not any(im.tobytes() in train_bytes for im in data.val.images)
    assert (len(data.train), len(data.val)) == (2950, 2949)
    kept = load_cifake(sample_dir, val_fraction=0.5, seed=0, progress=False)  # both twins on one side
    assert kept.duplicates["dropped_val"] == 0 and len(kept.val) == 2950


def test_full_cifake_default_split_drops_its_168_validation_twins(archive_path):
    """The audit's count: with the default split (10%, seed 0), 168 validation images of the full
    CIFAKE have a pixel-identical twin in train; they are dropped, and none is left."""
    data = load_cifake(str(archive_path), val_fraction=0.1, seed=0, progress=False)
    assert data.duplicates["dropped_val"] == 168 and len(data.val) == 10_000 - 168
    train_hashes = set(content_hashes(data.train.images).tolist())
    left = [i for i, h in enumerate(content_hashes(data.val.images).tolist()) if h in train_hashes]
    assert not any((data.val.images[i] == data.train.images).all(axis=(1, 2, 3)).any() for i in left)
