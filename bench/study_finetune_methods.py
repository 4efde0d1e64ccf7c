"""Study: FLYP vs its CE ablation vs CoOp prompt tuning vs the WiSE-FT choice, over training seeds.

From a randomly initialised tiny CLIP (`models.write_tiny_clip`) on one data split (the data seed
stays fixed; only the training seed varies), each method is trained with the same settings and
scored on the test split: accuracy at p_fake >= 0.5 and ROC AUC, then mean and sd over seeds.
FLYP runs once per seed with WiSE-FT; its alpha = 1 row is FLYP itself, the row chosen on
validation AUC is WiSE-FT's (test figures from wise_ft.csv, computed after the choice).

    python bench/study_finetune_methods.py --data $CIFAKE_DATA --seeds 0,1,2 --epochs 3 --lr 5e-4
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

from _common import add_data_argument, add_threads_argument, prepare


def _row(method: str, seed: int, acc: float, auc: float) -> dict:
    return {"method": method, "seed": seed, "accuracy@0.5": acc, "roc_auc": auc}


def run_seed(data, model_dir: str, out: Path, seed: int, a) -> list[dict]:
    from cifake_lib.methods.finetune import FinetuneConfig, finetune

    common = dict(model=model_dir, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, prompts=a.prompts, seed=seed,
                  cpu=True, progress=False, patience=None, save_every=10**9)
    rows = []
    finetune(data, FinetuneConfig(out=str(out / f"flyp-{seed}"), loss="flyp", wise_ft=a.wise_ft, **common))
    wise = list(csv.DictReader(open(out / f"flyp-{seed}" / "wise_ft.csv")))
    one = next(r for r in wise if float(r["alpha"]) == 1.0)
    chosen = next(r for r in wise if r["chosen"] == "True")
    rows.append(_row("flyp", seed, float(one["test_accuracy"]), float(one["test_roc_auc"])))
    rows.append(_row(f"wise-ft (alpha {float(chosen['alpha']):g})", seed, float(chosen["test_accuracy"]),
                     float(chosen["test_roc_auc"])))
    for method, kw in (("ce", {"loss": "ce"}), ("prompt", {"train": "prompt"})):
        r = finetune(data, FinetuneConfig(out=str(out / f"{method}-{seed}"), **kw, **common))
        rows.append(_row(method, seed, r.metrics["natural_threshold"]["accuracy"], r.metrics["roc_auc"]))
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for method in dict.fromkeys(r["method"].split(" (")[0] for r in rows):
        mine = [r for r in rows if r["method"].split(" (")[0] == method]
        s = {"method": method, "n_seeds": len(mine)}
        for k in ("accuracy@0.5", "roc_auc"):
            v = [r[k] for r in mine]
            s[k] = (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
        s["alphas"] = [r["method"] for r in mine] if method == "wise-ft" else None
        out.append(s)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(ap, env="CIFAKE_DATA", what="a CIFAKE folder or archive (e.g. the sample)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data-seed", type=int, default=0, help="the split's seed, fixed across training seeds")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--prompts", default="ensemble")
    ap.add_argument("--wise-ft", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temporary folder)")
    add_threads_argument(ap)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    prepare(a.threads or 1)  # one thread unless asked: the tiny model gains nothing from more

    from cifake_lib.clip.tiny import write_tiny_clip
    from cifake_lib.data.load import load_cifake

    data = load_cifake(a.data, val_fraction=0.1, seed=a.data_seed, progress=False)
    with tempfile.TemporaryDirectory(prefix="study_ft_") as tmp:
        out = Path(a.out or tmp)
        model_dir = str(write_tiny_clip(out / "tiny-clip"))
        rows = [r for s in a.seeds.split(",") for r in run_seed(data, model_dir, out, int(s), a)]
    summary = summarise(rows)
    if a.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=2))
    else:
        print(f"tiny CLIP from scratch, {len(data.train)} train / {len(data.val)} val / {len(data.test)} test, "
              f"epochs {a.epochs}, lr {a.lr:g}, batch {a.batch_size}, prompts {a.prompts}, seeds {a.seeds}")
        for s in summary:
            (am, asd), (um, usd) = s["accuracy@0.5"], s["roc_auc"]
            print(f"{s['method']:10} accuracy@0.5 {am:.3f} ± {asd:.3f}   ROC AUC {um:.3f} ± {usd:.3f}"
                  + (f"   ({', '.join(s['alphas'])})" if s["alphas"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
