"""Sweep: the CIFAKE CNN recipe's learning rate and batch size, chosen on VALIDATION only.

Trains `methods.cnn.train_cnn` on a stratified train subset for every (lr, batch size) of a
small grid and prints each setting's best validation accuracy and AUC, and the validation
accuracy after 5, 10 and 15 epochs (what the number of epochs buys). Test images are never
scored here: `TrainConfig`'s defaults are the row this table ranks first.

    python bench/sweep_cnn.py                                 # 20000 train images, 20% validation
    python bench/sweep_cnn.py --subset 8000 --epochs 6 --json # quicker
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

from _common import add_data_argument, add_threads_argument, prepare


def sweep(a: argparse.Namespace) -> list[dict]:
    """One row per (lr, batch size): best validation accuracy/AUC, its epoch, accuracy by epoch."""
    from cifake_lib.data.load import load_cifake
    from cifake_lib.methods.cnn import TrainConfig, train_cnn

    # The test subset is the smallest allowed; nothing below looks at it.
    data = load_cifake(a.data, subset=(a.subset, 2), val_fraction=a.val_fraction, seed=a.seed,
                       progress=not a.quiet)
    rows = []
    for lr, batch in itertools.product(a.lrs, a.batch_sizes):
        t0 = time.perf_counter()
        tc = TrainConfig(epochs=a.epochs, lr=lr, batch_size=batch, seed=a.seed)
        result = train_cnn(data.train, data.val, train_config=tc, progress=not a.quiet)
        h = result.history
        best = h[result.best_epoch - 1]
        rows.append({"lr": lr, "batch_size": batch, "epochs": len(h), "best_epoch": result.best_epoch,
                     "val_accuracy": best["val_accuracy"], "val_auc": best["val_auc"],
                     **{f"val_accuracy@{e}": h[e - 1]["val_accuracy"] for e in (5, 10, 15) if e <= len(h)},
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return sorted(rows, key=lambda r: (r["val_accuracy"], r["val_auc"]), reverse=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(ap)
    ap.add_argument("--subset", type=int, default=20000, help="train images before the validation split")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lrs", type=lambda s: [float(x) for x in s.split(",")], default=[1e-3, 2e-3, 4e-3])
    ap.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[64, 128])
    ap.add_argument("--seed", type=int, default=0)
    add_threads_argument(ap)
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    prepare(a.threads)
    rows = sweep(a)
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"CNN recipe sweep: {a.subset:,} train images ({a.val_fraction:.0%} validation), seed {a.seed}; "
          "ranked by best validation accuracy (then AUC). No test image is scored.")
    print(f"{'lr':>8} {'batch':>6} {'best ep':>8} {'val acc':>8} {'val AUC':>8} "
          f"{'@5':>7} {'@10':>7} {'@15':>7} {'s':>6}")
    for r in rows:
        at = [f"{r.get(f'val_accuracy@{e}', float('nan')):.4f}" for e in (5, 10, 15)]
        print(f"{r['lr']:>8g} {r['batch_size']:>6} {r['best_epoch']:>8} {r['val_accuracy']:>8.4f} "
              f"{r['val_auc']:>8.4f} {at[0]:>7} {at[1]:>7} {at[2]:>7} {r['seconds']:>6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
