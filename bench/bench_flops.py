"""FLOPs per image of each backbone at several input sides, counted on the published shapes.

    python bench/bench_flops.py                 # CLIP ViT-B/32, B/16, L/14, SigLIP 2 base, DINOv2 base at 224, 112, 64
    python bench/bench_flops.py --sizes 224,96 --json

Each model is built from its published dimensions on the meta device (no weights, no memory) and
counted with torch.utils.flop_counter (`cifake_lib.clip.flops`): one image through the vision
tower, forward and forward+backward, at each side (position embeddings interpolated as a run
with --image-size does), and one prompt through the text tower (CLIP: 77 tokens, SigLIP: 64).
GFLOP = 1e9 multiply-or-add operations. What a run actually used is in its run.json
(cost.flops_per_image).
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import prepare

BACKBONES = (("clip", "vit-b-32", "CLIP ViT-B/32"), ("clip", "vit-b-16", "CLIP ViT-B/16"),
             ("clip", "vit-l-14", "CLIP ViT-L/14"), ("siglip", "siglip2-base", "SigLIP 2 base/16"),
             ("dinov2", "dinov2-base", "DINOv2 base/14"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="224,112,64", help="input sides in pixels (default 224,112,64)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    prepare()
    from cifake_lib.clip.flops import flops_per_image
    from cifake_lib.clip.tiny import meta_model

    sizes = [int(s) for s in a.sizes.split(",")]
    rows = []
    for family, shape, name in BACKBONES:
        model = meta_model(family, shape)
        params = sum(p.numel() for p in model.parameters())
        for side in sizes:
            rows.append({"backbone": name, "params": params, **flops_per_image(model, side)})
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    g = 1e9
    print("GFLOP per image (vision tower) and per prompt (text tower); fwd = forward, f+b = forward and backward")
    print(f"{'backbone':<18}{'params':>9}{'side':>6}{'vision fwd':>12}{'vision f+b':>12}{'text fwd':>10}{'text f+b':>10}")
    for r in rows:
        text = (f"{r['text_forward'] / g:>10.2f}{r['text_forward_backward'] / g:>10.2f}" if "text_forward" in r
                else f"{'-':>10}{'-':>10}")
        print(f"{r['backbone']:<18}{r['params'] / 1e6:>8.1f}M{r['image_size']:>6}{r['vision_forward'] / g:>12.2f}"
              f"{r['vision_forward_backward'] / g:>12.2f}{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
