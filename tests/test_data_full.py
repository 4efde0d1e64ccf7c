"""The whole of CIFAKE (`$CIFAKE_ARCHIVE`), read straight from its .tar.gz: counts, classes, duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from cifake_lib import CIFAR_CLASSES
from cifake_lib.data.load import load_cifake

pytestmark = pytest.mark.full


@pytest.fixture(scope="module")
def full(archive_path):
    return load_cifake(str(archive_path), val_fraction=0, dedup=True, progress=False)


def test_counts_and_classes_of_the_full_dataset(full):
    assert full.val is None
    for split, per_label in ((full.train, 50_000), (full.test, 10_000 - 378)):
        assert split.images.shape[1:] == (32, 32, 3) and split.images.dtype == np.uint8
        assert (split.labels == 0).sum() == (10_000 if split is full.test else per_label)
        assert (split.labels == 1).sum() == per_label
        assert (split.classes >= 0).all()  # every class recovered from the file names
    real_train = full.train.classes[full.train.labels == 0]
    assert np.bincount(real_train, minlength=10).tolist() == [5_000] * len(CIFAR_CLASSES)


def test_the_documented_duplicates_and_the_leak(full):
    # 1,336 byte-identical FAKE pairs: 920 within train, 38 within test, 378 across (a leak).
    d = full.duplicates
    assert (d["within_train"], d["within_test"], d["train_test"]) == (920, 38, 378)
    assert d["dropped_test"] == 378
