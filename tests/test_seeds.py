"""seeds.csv: each detector's metrics over training seeds (cifake_lib.analysis.seeds)."""

from __future__ import annotations

import csv
import statistics

import pytest
from analysis_helpers import scores, synthetic_split

from cifake_lib.analysis.seeds import SEED_METRICS, seed_rows, write_seed_table
from cifake_lib.evaluation.runs import write_run


def _record(detector: str, seed: int, acc: float, auc: float | None, natural: float) -> dict:
    return {"detector": detector, "seed": seed, "accuracy": acc, "roc_auc": auc,
            "natural_threshold": {"accuracy": natural}}


def test_mean_and_sample_sd_against_statistics():
    accs, aucs, nat = [0.91, 0.87, 0.95], [0.97, 0.93, 0.99], [0.5, 0.52, 0.61]
    records = [_record("finetune:both", s, a, u, n) for s, a, u, n in zip((0, 1, 2), accs, aucs, nat, strict=True)]
    records.append(_record("zeroshot:plain", 0, 0.6, 0.62, 0.5))
    rows = {(r["detector"], r["metric"]): r for r in seed_rows(records)}
    acc = rows["finetune:both", "accuracy"]
    assert acc["mean"] == pytest.approx(statistics.mean(accs)) and acc["sd"] == pytest.approx(statistics.stdev(accs))
    assert acc["n_seeds"] == 3 and [acc[f"seed_{s}"] for s in (0, 1, 2)] == accs
    assert rows["finetune:both", "accuracy@0.5"]["mean"] == pytest.approx(statistics.mean(nat))
    one = rows["zeroshot:plain", "roc_auc"]
    assert one["n_seeds"] == 1 and one["mean"] == 0.62 and one["sd"] is None  # no spread from one seed
    assert rows["finetune:both", "ece"]["n_seeds"] == 0 and rows["finetune:both", "ece"]["mean"] is None
    assert len(rows) == 2 * len(SEED_METRICS)


def test_a_missing_value_is_left_out_of_mean_and_sd():
    rows = {r["metric"]: r for r in seed_rows([_record("probe", 0, 0.8, None, 0.5), _record("probe", 3, 0.9, 0.95, 0.5)])}
    assert rows["roc_auc"]["n_seeds"] == 1 and rows["roc_auc"]["mean"] == 0.95 and rows["roc_auc"]["seed_0"] is None
    assert rows["accuracy"]["sd"] == pytest.approx(statistics.stdev([0.8, 0.9]))


def test_the_same_run_twice_is_an_error():
    with pytest.raises(ValueError, match="two runs with seed 1"):
        seed_rows([_record("cnn", 1, 0.8, 0.9, 0.8), _record("cnn", 1, 0.7, 0.9, 0.8)])


def test_write_seed_table_from_run_folders(tmp_path):
    test, val = synthetic_split(40, seed=1), synthetic_split(20, seed=2, prefix="train")
    dirs, accs = [], []
    for seed in (0, 1):
        m = write_run(tmp_path / f"cnn{seed}", test=test, p_test=scores(test, 1.0, seed), val=val,
                      p_val=scores(val, 1.0, seed + 10), detector={"kind": "cnn", "detector": "cnn"}, model="m",
                      data="synthetic", seed=seed, args={}, seconds=1.0, n_boot=0)
        dirs.append(tmp_path / f"cnn{seed}")
        accs.append(m["accuracy"])
    path = write_seed_table(dirs, tmp_path / "seeds.csv")
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["detector", "metric", "mean", "sd", "n_seeds", "seed_0", "seed_1"]
    acc = next(r for r in rows if r["metric"] == "accuracy")
    assert acc["detector"] == "cnn" and acc["n_seeds"] == "2"
    assert [float(acc["seed_0"]), float(acc["seed_1"])] == accs
    assert float(acc["sd"]) == pytest.approx(statistics.stdev(accs))
