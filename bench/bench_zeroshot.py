"""Benchmark: zero-shot evaluation cost, on a ViT-B/32-shaped CLIP (random weights, offline).

1. Five prompt sets versus one on the same images (no disk cache). Target, on scoring
   (`zeroshot.score_prompt_sets`: image pass, text pass, heads, p_fake for val and test): five
   sets take at most 1.2x the time of one, the image pass being shared. Also reported: the
   whole stage (`zeroshot.run`, no figures), which adds loading the model and writing
   one run folder per set (metrics with 1,000 bootstrap resamples, predictions CSVs): that
   part grows with the number of sets by design and dominates when the image pass is short
   (a GPU and a few thousand images).
2. Embedding throughput: images/s of `features.image_features` from a uint8 array (host ->
   device, preprocessing, model) versus the model alone (`get_image_features` on ready
   pixel_values tensors), same batch size and device. Target: >= 0.9 of model-only.

    python bench/bench_zeroshot.py                    # 288 images (256 test + 32 val), batch 64
    python bench/bench_zeroshot.py --images 512 --json
    python bench/bench_zeroshot.py --device cuda --images 4096 --batch-size 256

Images: the real CIFAKE sample when available ($CIFAKE_DATA, else the shared sample folder),
else random uint8 images. Timings are the best of `--repeats` rounds, the two variants of each
comparison interleaved, so that load from other processes on a shared machine hits both alike.
Progress goes to stderr; the table (or `--json`) to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_PROMPT_RATIO = 1.2
TARGET_THROUGHPUT_RATIO = 0.9


def _data(n_images: int, seed: int):
    """CifakeData with `n_images` test images and n/8 validation images (real sample if present)."""
    from cifake_lib.data.load import CifakeData, Split, load_cifake

    n_val = max(2, n_images // 8)
    folder = os.environ.get("CIFAKE_DATA")
    if folder and Path(folder).is_dir():
        # val_fraction 0.5 of a 2*n_val train subset gives n_val validation images.
        data = load_cifake(folder, subset=(2 * n_val, n_images), val_fraction=0.5, seed=seed, progress=False)
        return data, f"CIFAKE sample ({folder})"
    rng = np.random.default_rng(seed)

    def split(n: int, tag: str) -> Split:
        return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 2,
                     np.arange(n) % 10, [f"{tag}/{i}" for i in range(n)])

    return CifakeData(train=split(2, "train"), test=split(n_images, "test"), val=split(n_val, "val"),
                      source="random", cache_path=None), "random uint8 images"


def bench_prompt_sets(model_dir: Path, data, *, batch_size: int, device: str, repeats: int,
                      out: Path) -> dict:
    """Scoring (`score_prompt_sets`: image pass, text pass, heads, p_fake for val and test; the
    target) and the whole stage (`zeroshot.run`: also loading the model and writing one run folder
    per set with bootstrap CIs; reported, no target), each for one set and for five."""
    from cifake_lib.clip.prompts import PROMPT_SETS
    from cifake_lib.methods import zeroshot
    from cifake_lib.methods.config import ZeroshotConfig
    from cifake_lib.methods.zeroshot import load_for_inference, score_prompt_sets

    five = list(PROMPT_SETS)[:5]
    splits = {"test": data.test, "val": data.val}
    model, processor = load_for_inference(model_dir, device)
    score_prompt_sets(model, processor, {"val": data.val}, five, batch_size=batch_size, cache=False,
                      progress=False)  # warm-up
    times: dict[str, list[float]] = {"score_one": [], "score_five": [], "stage_one": [], "stage_five": []}
    for r in range(repeats):
        for key, prompts in (("one", five[:1]), ("five", five)):
            t0 = time.perf_counter()
            score_prompt_sets(model, processor, splits, prompts, batch_size=batch_size, cache=False, progress=False)
            _sync(device)
            times[f"score_{key}"].append(time.perf_counter() - t0)
        for key, prompts in (("one", five[:1]), ("five", five)):
            t0 = time.perf_counter()
            cfg = ZeroshotConfig(model=str(model_dir), prompts=",".join(prompts), batch_size=batch_size,
                                 device=device, cache=False, figures=False, n_boot=1000, progress=False)
            zeroshot.run(data, cfg, out / f"{key}_{r}")
            times[f"stage_{key}"].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["score_five"] / best["score_one"]
    return {"prompt_sets": five, "score_one_s": best["score_one"], "score_five_s": best["score_five"],
            "ratio": ratio, "target_ratio": TARGET_PROMPT_RATIO, "pass": ratio <= TARGET_PROMPT_RATIO,
            "stage_one_s": best["stage_one"], "stage_five_s": best["stage_five"],
            "stage_ratio": best["stage_five"] / best["stage_one"], "all_s": times}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_throughput(model_dir: Path, images: np.ndarray, *, batch_size: int, device: str,
                     repeats: int) -> dict:
    import torch

    from cifake_lib.clip.features import image_features
    from cifake_lib.data.preprocess import ImagePreprocessor
    from cifake_lib.methods.zeroshot import load_for_inference

    model, processor = load_for_inference(model_dir, device)
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pre = ImagePreprocessor.from_processor(processor)
    # Model-only input: every batch already preprocessed and on the device.
    with torch.inference_mode():
        ready = [pre(torch.from_numpy(images[i:i + batch_size]).to(dev), dtype=dtype)
                 for i in range(0, len(images), batch_size)]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    @torch.inference_mode()
    def model_only() -> None:
        for pv in ready:
            feats = model.get_image_features(pixel_values=pv).pooler_output
        feats.float().cpu()  # the end-to-end path also brings features back to the host
        sync()

    def end_to_end() -> None:
        image_features(model, processor, images, batch_size=batch_size, cache=False, progress=False)
        sync()

    # Warm-up (kernels, allocator, lazy init) on one batch each.
    image_features(model, processor, images[:batch_size], batch_size=batch_size, progress=False)
    times: dict[str, list[float]] = {"model_only": [], "end_to_end": []}
    for _ in range(repeats):
        for key, fn in (("model_only", model_only), ("end_to_end", end_to_end)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    n = len(images)
    mo, e2e = n / min(times["model_only"]), n / min(times["end_to_end"])
    return {"images": n, "batch_size": batch_size, "device": str(dev), "dtype": str(dtype),
            "model_only_img_s": mo, "end_to_end_img_s": e2e, "ratio": e2e / mo,
            "target_ratio": TARGET_THROUGHPUT_RATIO, "pass": e2e / mo >= TARGET_THROUGHPUT_RATIO,
            "all_model_only_s": times["model_only"], "all_end_to_end_s": times["end_to_end"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="test images (validation adds 1/8; default 256)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds per variant; the best counts (default 2)")
    ap.add_argument("--model", default=None, help="CLIP folder or Hub id (default: random ViT-B/32-shaped)")
    ap.add_argument("--skip", choices=("prompts", "throughput"), default=None, help="skip one part")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    a = ap.parse_args(argv)

    os.environ.setdefault("CIFAKE_CACHE", str(Path(tempfile.gettempdir()) / "cifake_bench_cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from cifake_lib.clip.models import pick_device
    from cifake_lib.clip.tiny import write_tiny_clip

    if a.threads:
        torch.set_num_threads(a.threads)
    device = str(pick_device(a.device))
    with tempfile.TemporaryDirectory(prefix="bench_zeroshot_") as tmp:
        tmp = Path(tmp)
        model_dir = Path(a.model) if a.model else write_tiny_clip(tmp / "vit_b_32", shape="vit-b-32")
        data, source = _data(a.images, a.seed)
        result: dict = {"model": "random ViT-B/32-shaped CLIP" if not a.model else str(a.model),
                        "data": source, "device": device, "torch_threads": torch.get_num_threads(),
                        "cpu_count": os.cpu_count()}
        if a.skip != "prompts":
            print("bench: five prompt sets vs one ...", file=sys.stderr)
            result["prompt_sets"] = bench_prompt_sets(model_dir, data, batch_size=a.batch_size, device=device,
                                                      repeats=a.repeats, out=tmp / "runs")
        if a.skip != "throughput":
            print("bench: embedding throughput ...", file=sys.stderr)
            images = np.concatenate([data.test.images, data.val.images])
            result["throughput"] = bench_throughput(model_dir, images, batch_size=a.batch_size, device=device,
                                                    repeats=a.repeats)

    if a.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model: {result['model']} | data: {result['data']} | device: {device} "
          f"({result['torch_threads']} torch threads, {result['cpu_count']} CPUs)")
    print(f"{'measure':<44}{'value':>12}{'target':>12}  ok")
    if "prompt_sets" in result:
        p = result["prompt_sets"]
        n = len(data.test) + len(data.val)
        print(f"{'scoring, one prompt set (s, ' + str(n) + ' images)':<44}{p['score_one_s']:>12.3f}")
        print(f"{'scoring, five prompt sets (s)':<44}{p['score_five_s']:>12.3f}")
        print(f"{'  five / one':<44}{p['ratio']:>12.3f}{'<= ' + str(TARGET_PROMPT_RATIO):>12}  "
              f"{'yes' if p['pass'] else 'NO'}")
        print(f"{'stage, one set (s; + model load, run folder)':<44}{p['stage_one_s']:>12.3f}")
        print(f"{'stage, five sets (s; five run folders)':<44}{p['stage_five_s']:>12.3f}")
        print(f"{'  five / one':<44}{p['stage_ratio']:>12.3f}")
    if "throughput" in result:
        t = result["throughput"]
        print(f"{'model only (img/s, batch ' + str(t['batch_size']) + ')':<44}{t['model_only_img_s']:>12.1f}")
        print(f"{'end to end: uint8 -> features (img/s)':<44}{t['end_to_end_img_s']:>12.1f}")
        print(f"{'  end to end / model only':<44}{t['ratio']:>12.3f}{'>= ' + str(TARGET_THROUGHPUT_RATIO):>12}  "
              f"{'yes' if t['pass'] else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
