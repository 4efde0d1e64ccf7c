"""Saliency maps: which pixels make a detector say FAKE.

Methods (every map has the image's (H, W), is finite and lies in [0, 1]). Each explains a
target label: `target="fake"` the evidence for FAKE (the logit of p_fake), `"real"` the
evidence for REAL (its negative), `"predicted"` (the default, as in Grad-CAM) the label the
detector chose at its own threshold.

- `gradcam` for CLIP (Selvaraju et al. 2017, adapted to ViTs as in pytorch-grad-cam): the
  patch tokens entering the LAST vision encoder block (the output of its `layer_norm1`),
  weighted per channel by the mean gradient of the target logit (logit(p_fake) = z_FAKE -
  z_REAL, or its negative), summed over channels, ReLU. The last block's own output tokens cannot be
  used: only its CLS token reaches the pooled embedding, so their gradient is zero.
- `rollout` for CLIP (Abnar & Zuidema 2020): attention rollout over every vision block,
  heads averaged, identity added for the residual path, rows renormalised; the CLS row over
  the patches. Class-agnostic (it shows where the model looks, not what makes it say FAKE).
  Needs the eager attention implementation (SDPA returns no attentions): switched on for the
  call and restored after.
- `gradxinput` for CLIP: |sum over colour channels of gradient x input| on the model's
  pixel_values, pooled back to the image's size.
- `gradcam` for the CNN: classic Grad-CAM on its last conv layer (`CifakeCNN.features`),
  for the target logit.
- `occlusion` for any detector (black box, `predict_proba` only): a square filled with the
  image's mean colour slides over the image; a pixel's value is the mean drop of the target
  logit over the windows covering it, ReLU.

CLIP maps live on the model's input grid (after resize and centre crop); they are mapped
back to the image's own coordinates (zero outside the crop). CLIP detectors are those with
`.model` (a CLIPModel), `.processor` and a head this module can differentiate:
a zero-shot/fine-tuned `ClipDetector` (`.head`, the package's one torch `ZeroShotHead`) or a
`ProbeDetector` (`.probe`, a ProbeModel, re-expressed in torch with the same maths). Anything else
falls back to `occlusion`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from cifake_lib.core.formatting import format_metric

CLIP_METHODS = ("gradcam", "rollout", "gradxinput", "occlusion")
CNN_METHODS = ("gradcam", "occlusion")
TARGETS = ("predicted", "fake", "real")


# --------------------------------------------------------------------------- helpers

def normalize_map(m: Any) -> np.ndarray:
    """float32 map scaled to [0, 1] (min -> 0, max -> 1); NaN/inf -> 0; a constant map -> zeros."""
    m = np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if m.size == 0:
        return np.zeros(m.shape, dtype=np.float32)
    lo, hi = m.min(), m.max()
    if not hi > lo:
        return np.zeros(m.shape, dtype=np.float32)
    return ((m - lo) / (hi - lo)).astype(np.float32)


BLANK_MAP_TEXT = "no gradient signal for this decision"


def is_blank(m: Any) -> bool:
    """True when a map is constant (e.g. all zeros: a ReLU-clipped Grad-CAM with nothing positive).

    Such a map carries no information; drawn through a colour map it would look like a real
    "nothing matters here" answer, so callers say BLANK_MAP_TEXT instead.
    """
    m = np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return m.size == 0 or not m.max() > m.min()


def resize_map(m: Any, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to (H, W) (area averaging when shrinking)."""
    t = torch.as_tensor(np.asarray(m, dtype=np.float32))[None, None]
    if tuple(t.shape[-2:]) == tuple(size):
        return t[0, 0].numpy()
    shrink = size[0] < t.shape[-2] and size[1] < t.shape[-1]
    out = F.interpolate(t, size=size, mode="area") if shrink else \
        F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def _check_image(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return image


def _to_logit(p: Any) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def _sign(target: str, logit: float, detector: Any) -> float:
    """+1 to explain FAKE, -1 to explain REAL; "predicted" follows the detector's own threshold."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if target == "fake":
        return 1.0
    if target == "real":
        return -1.0
    threshold = float(getattr(detector, "threshold", 0.5))
    return 1.0 if logit >= float(_to_logit(threshold)) else -1.0


# --------------------------------------------------------------------------- CLIP heads

def is_clip(detector: Any) -> bool:
    """A detector whose backbone (CLIP, SigLIP, an image-only encoder: `clip.backbone`) this module
    can differentiate through."""
    model = getattr(detector, "model", None)
    return (model is not None and hasattr(detector, "processor")
            and hasattr(getattr(model, "config", None), "model_type") and _head_fn(detector) is not None)


def _features(detector: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """The detector's image features of pixel_values: the backbone's embedding, through its CLIP-Adapter if any."""
    from cifake_lib.clip.backbone import image_embeds

    feats = image_embeds(detector.model, pixel_values)
    adapter = getattr(detector, "adapter", None)
    return feats if adapter is None else adapter(feats)


def _zeroshot_logit(head: Any, feats: torch.Tensor, cifar_class: int, use_class: bool) -> torch.Tensor:
    """logit(p_fake) = z_FAKE - z_REAL of the detector's `clip.head.ZeroShotHead` (differentiable)."""
    classes = torch.full((len(feats),), int(cifar_class) if use_class else -1, dtype=torch.long)
    z = head.logits(feats, classes)
    return z[:, 1] - z[:, 0]


def _probe_logit(detector: Any) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    """The probe's logit in torch (same maths as probe.ProbeModel.decision_function), or None."""
    probe = getattr(detector, "probe", None)
    if probe is None or not hasattr(probe, "weights") or not hasattr(probe, "mean"):
        return None

    def logit(feats: torch.Tensor, cls: int) -> torch.Tensor:
        def t(a: Any) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a), dtype=torch.float64, device=feats.device)

        z = (F.normalize(feats.float(), dim=-1).double() - t(probe.mean)) / t(probe.scale)
        for w, b in zip(probe.weights[:-1], probe.biases[:-1], strict=True):
            z = torch.relu(z @ t(w).T + t(b))
        return (z @ t(probe.weights[-1]).T + t(probe.biases[-1]))[:, 0]

    return logit


def _head_fn(detector: Any) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    """feats (B, D) projected image embeddings, cifar_class -> logit(p_fake) (B,), differentiable."""
    head = getattr(detector, "head", None)
    if head is not None and hasattr(head, "weights") and hasattr(head, "logit_scale"):
        use = bool(getattr(detector, "use_known_class", True))
        return lambda feats, cls: _zeroshot_logit(head, feats, cls, use)
    return _probe_logit(detector)


def _pixel_values(detector: Any, image: np.ndarray) -> tuple[torch.Tensor, Any]:
    from cifake_lib.data.preprocess import ImagePreprocessor

    model = detector.model
    pre = ImagePreprocessor.from_processor(detector.processor)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    return pre(torch.from_numpy(np.ascontiguousarray(image[None])).to(device), dtype=dtype), pre


def _to_image_coords(m: np.ndarray, pre: Any, shape: tuple[int, int]) -> np.ndarray:
    """A map on the model's input grid -> the image's (H, W): undo centre crop (zeros outside), resize."""
    h, w = shape
    rh, rw = pre.resized_shape(h, w)
    if pre.crop_size:
        ch, cw = pre.crop_size["height"], pre.crop_size["width"]
    else:
        ch, cw = rh, rw
    crop = resize_map(m, (ch, cw))
    canvas = np.zeros((max(rh, ch), max(rw, cw)), dtype=np.float32)
    top, left = (canvas.shape[0] - ch) // 2, (canvas.shape[1] - cw) // 2
    canvas[top:top + ch, left:left + cw] = crop
    # where the crop padded a too-small image, cut the padding off again
    ph, pw = max(ch - rh, 0), max(cw - rw, 0)
    canvas = canvas[ph // 2: ph // 2 + rh, pw // 2: pw // 2 + rw]
    return resize_map(canvas, (h, w))


def _grid(n_tokens: int) -> int:
    g = int(round(np.sqrt(n_tokens)))
    if g * g != n_tokens:
        raise ValueError(f"cannot arrange {n_tokens} patch tokens on a square grid")
    return g


@contextlib.contextmanager
def _grad_mode(model: torch.nn.Module):
    """Gradients on, parameters frozen (we only want input/activation gradients), eval mode kept."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)


# --------------------------------------------------------------------------- CLIP methods

def _gradient_inputs(detector: Any, image: Any):
    """(image, head, model, pixel_values needing grad, preprocessor) for a gradient-based CLIP map."""
    image = _check_image(image)
    head = _head_fn(detector)
    if head is None:
        raise ValueError(f"{type(detector).__name__}: no differentiable CLIP head; use method='occlusion'")
    pv, pre = _pixel_values(detector, image)
    # parameters are frozen: the graph starts at the input
    return image, head, detector.model, pv.detach().requires_grad_(True), pre


def clip_gradcam(detector: Any, image: Any, *, cifar_class: int = -1, target: str = "predicted") -> np.ndarray:
    """Grad-CAM on the patch tokens entering the last vision block (after its first layer norm),
    for the target logit. (H, W) in [0, 1]."""
    from cifake_lib.clip.backbone import has_class_token, vision_blocks

    image, head, model, pv, pre = _gradient_inputs(detector, image)
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        output.retain_grad()
        store["tokens"] = output

    last = vision_blocks(model)[-1]
    norm = getattr(last, "layer_norm1", None) or last.norm1  # CLIP, SigLIP: layer_norm1; DINOv2: norm1
    handle = norm.register_forward_hook(hook)
    try:
        with _grad_mode(model):
            z = head(_features(detector, pv), int(cifar_class)).sum()
            (_sign(target, float(z.detach()), detector) * z).backward()
    finally:
        handle.remove()
    first = 1 if has_class_token(model) else 0  # the patch tokens only
    tokens = store["tokens"][0, first:].detach().float()  # (P, D)
    grads = store["tokens"].grad[0, first:].float()
    cam = torch.relu(tokens @ grads.mean(dim=0))
    g = _grid(len(cam))
    return normalize_map(_to_image_coords(cam.reshape(g, g).cpu().numpy(), pre, image.shape[:2]))


@contextlib.contextmanager
def _eager_attention(model: Any):
    impl = getattr(model.config, "_attn_implementation", None)
    switch = impl not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(impl)


@torch.no_grad()
def attention_rollout(detector: Any, image: Any) -> np.ndarray:
    """Attention rollout of the vision encoder (the class token's row over the patches). (H, W) in [0, 1].

    Needs a class token: SigLIP pools with an attention head instead and gets no rollout."""
    from cifake_lib.clip.backbone import has_class_token, vision_tower

    image = _check_image(image)
    model = detector.model
    if not has_class_token(model):
        raise ValueError("attention rollout follows the class token; this vision tower has none (SigLIP)")
    pv, pre = _pixel_values(detector, image)
    with _eager_attention(model):
        out = vision_tower(model)(pixel_values=pv, output_attentions=True)
    attentions = out.attentions
    if not attentions:
        raise RuntimeError("the vision encoder returned no attentions (eager attention unavailable?)")
    rollout = None
    for a in attentions:
        a = a[0].float().mean(dim=0)  # heads averaged: (T, T)
        a = a + torch.eye(a.shape[-1], device=a.device)  # the residual path
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    cls_row = rollout[0, 1:]
    g = _grid(len(cls_row))
    return normalize_map(_to_image_coords(cls_row.reshape(g, g).cpu().numpy(), pre, image.shape[:2]))


def gradient_x_input(detector: Any, image: Any, *, cifar_class: int = -1, target: str = "predicted") -> np.ndarray:
    """|sum_c grad x input| on pixel_values for the target logit, pooled to the image. (H, W) in [0, 1]."""
    image, head, model, pv, pre = _gradient_inputs(detector, image)
    with _grad_mode(model):
        z = head(_features(detector, pv), int(cifar_class)).sum()
        (_sign(target, float(z.detach()), detector) * z).backward()
    sal = (pv.grad[0].float() * pv[0].detach().float()).sum(dim=0).abs()
    return normalize_map(_to_image_coords(sal.cpu().numpy(), pre, image.shape[:2]))


# --------------------------------------------------------------------------- CNN

def cnn_gradcam(detector: Any, image: Any, *, target: str = "predicted") -> np.ndarray:
    """Grad-CAM on the CNN's last conv layer (`CifakeCNN.features`), target logit. (H, W) in [0, 1].

    detector: a `CNNDetector` or a `CifakeCNN`.
    """
    from cifake_lib.methods.cnn import to_input

    image = _check_image(image)
    model = getattr(detector, "model", detector)
    device = next(model.parameters()).device
    x = to_input(torch.from_numpy(np.ascontiguousarray(image[None])).to(device), model.config.image_size)
    x.requires_grad_(True)  # parameters are frozen: the graph starts at the input
    with _grad_mode(model):
        acts = model.features(x)  # (1, C, h, w): the last conv layer's activation map
        acts.retain_grad()
        z = model.head(acts).sum()
        (_sign(target, float(z.detach()), detector) * z).backward()
    weights = acts.grad[0].mean(dim=(1, 2))  # (C,)
    cam = torch.relu((weights[:, None, None] * acts[0].detach()).sum(dim=0))
    return normalize_map(resize_map(cam.cpu().numpy(), image.shape[:2]))


# --------------------------------------------------------------------------- any detector

def _predict(detector: Any, images: np.ndarray, cifar_class: int) -> np.ndarray:
    import inspect

    try:
        takes_classes = "classes" in inspect.signature(detector.predict_proba).parameters
    except (TypeError, ValueError):
        takes_classes = False
    if takes_classes:
        return np.asarray(detector.predict_proba(images, classes=np.full(len(images), cifar_class)))
    return np.asarray(detector.predict_proba(images))


def occlusion(detector: Any, image: Any, *, window: int | None = None, stride: int | None = None,
              cifar_class: int = -1, target: str = "predicted", batch_size: int = 256) -> np.ndarray:
    """Occlusion sensitivity for any detector with predict_proba: mean drop of the target logit. (H, W)."""
    image = _check_image(image)
    h, w = image.shape[:2]
    window = window or max(2, min(h, w) // 8)
    stride = stride or max(1, window // 2)
    fill = image.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    tops = list(range(0, max(1, h - window) + 1, stride))
    lefts = list(range(0, max(1, w - window) + 1, stride))
    if tops[-1] + window < h:
        tops.append(h - window)
    if lefts[-1] + window < w:
        lefts.append(w - window)
    boxes = [(t, left) for t in tops for left in lefts]
    base = _to_logit(_predict(detector, image[None], cifar_class))[0]
    sign = _sign(target, base, detector)
    drop = np.zeros((h, w))
    count = np.zeros((h, w))
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        batch = np.repeat(image[None], len(chunk), axis=0)
        for k, (t, left) in enumerate(chunk):
            batch[k, t:t + window, left:left + window] = fill
        z = _to_logit(_predict(detector, batch, cifar_class))
        for k, (t, left) in enumerate(chunk):
            drop[t:t + window, left:left + window] += sign * (base - z[k])
            count[t:t + window, left:left + window] += 1
    return normalize_map(np.maximum(drop / np.maximum(count, 1), 0.0))


def methods_for(detector: Any) -> tuple[str, ...]:
    """The saliency methods available for this detector."""
    if getattr(detector, "kind", None) == "cnn" or hasattr(detector, "cam_layer") or \
            hasattr(getattr(detector, "model", None), "cam_layer"):
        return CNN_METHODS
    if is_clip(detector):
        from cifake_lib.clip.backbone import has_class_token

        return CLIP_METHODS if has_class_token(detector.model) else tuple(m for m in CLIP_METHODS if m != "rollout")
    return ("occlusion",)


def saliency(detector: Any, image: Any, method: str | None = None, *, cifar_class: int = -1,
             target: str = "predicted") -> np.ndarray:
    """A saliency map (H, W) in [0, 1] for `image` (uint8 (H, W, 3)); method None: the first available.

    cifar_class: the image's CIFAR class for class-aware zero-shot heads (-1 unknown).
    target: "predicted" (the detector's decision), "fake" or "real" (rollout ignores it).
    """
    available = methods_for(detector)
    method = method or available[0]
    if method not in available:
        raise ValueError(f"method {method!r} is not available for {type(detector).__name__}; "
                         f"choose from {available}")
    if method == "occlusion":
        return occlusion(detector, image, cifar_class=cifar_class, target=target)
    if available is CNN_METHODS:
        return cnn_gradcam(detector, image, target=target)
    if method == "gradcam":
        return clip_gradcam(detector, image, cifar_class=cifar_class, target=target)
    if method == "rollout":
        return attention_rollout(detector, image)
    return gradient_x_input(detector, image, cifar_class=cifar_class, target=target)


# --------------------------------------------------------------------------- display

def overlay(image: Any, sal: Any, *, alpha: float = 0.5, cmap: str = "jet", scale: int = 1) -> np.ndarray:
    """The image blended with a colour-mapped saliency map, uint8 (H*scale, W*scale, 3).

    Both are enlarged by pixel repetition (nearest neighbour), so image pixels stay honest.
    """
    from matplotlib import colormaps

    from cifake_lib.viz.gallery import upsample_nearest

    image = _check_image(image)
    sal = normalize_map(sal) if np.asarray(sal).shape == image.shape[:2] else \
        normalize_map(resize_map(sal, image.shape[:2]))
    heat = colormaps[cmap](sal)[..., :3] * 255.0
    blend = (1 - alpha) * image.astype(np.float64) + alpha * heat
    return upsample_nearest(np.clip(np.rint(blend), 0, 255).astype(np.uint8), scale)


def saliency_figure(images: Sequence[np.ndarray], maps: Mapping[str, Sequence[np.ndarray]], *,
                    titles: Sequence[str] | None = None, scale: int = 4, alpha: float = 0.5,
                    suptitle: str = "", cmap: str = "jet") -> Figure:
    """Rows: images; columns: the image, then one overlay per entry of `maps` ({column title: maps}).

    One colour bar explains the overlays (each map scaled to its own range, low to high). A
    constant map is not drawn as colour: its panel shows the image and BLANK_MAP_TEXT.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from cifake_lib.viz.gallery import upsample_nearest

    n, cols = len(images), 1 + len(maps)
    if n == 0:
        raise ValueError("saliency_figure: no images")
    fig = Figure(figsize=(1.9 * cols + 0.9, 1.9 * n + 0.6), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for i, im in enumerate(images):
        axes[i, 0].imshow(upsample_nearest(im, scale), interpolation="nearest")
        axes[i, 0].set_title(titles[i] if titles else "image", fontsize="x-small")
        for j, (name, ms) in enumerate(maps.items(), start=1):
            axes[i, j].set_title(name, fontsize="x-small")
            if is_blank(ms[i]):
                axes[i, j].imshow(upsample_nearest(im, scale), interpolation="nearest", alpha=0.35)
                axes[i, j].text(0.5, 0.5, BLANK_MAP_TEXT.replace(" for ", "\nfor "), ha="center", va="center",
                                fontsize="x-small", transform=axes[i, j].transAxes, wrap=True)
                continue
            axes[i, j].imshow(overlay(im, ms[i], alpha=alpha, scale=scale, cmap=cmap), interpolation="nearest")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if cols > 1:
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=cmap), ax=axes[:, 1:], shrink=min(0.9, 2.5 / n),
                           ticks=[0, 1], aspect=15)
        bar.ax.set_yticklabels(["low", "high"], fontsize="x-small")
        bar.set_label("saliency (each map\nscaled to its range)", fontsize="x-small")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def methods_figure(detector: Any, images: Sequence[np.ndarray], *, classes: Sequence[int] | None = None,
                   methods: Sequence[str] | None = None, titles: Sequence[str] | None = None,
                   target: str = "predicted", suptitle: str = "") -> Figure:
    """Every available saliency method (or `methods`) of one detector on the same images, side by side."""
    methods = list(methods or methods_for(detector))
    classes = [-1] * len(images) if classes is None else [int(c) for c in classes]
    maps = {m: [saliency(detector, im, m, cifar_class=c, target=target) for im, c in zip(images, classes, strict=True)]
            for m in methods}
    return saliency_figure(images, maps, titles=titles, suptitle=suptitle)


def saliency_gallery(run: Mapping[str, Any], split: Any, detector: Any, per_group: int = 1,
                     methods: Sequence[str] | None = None) -> Figure | None:
    """Saliency of the run's most confident right and wrong test images (`per_group` of each group).

    detector: the run's detector (detectors.load_detector(run["path"])); methods: default the
    first two gradient/attention methods available (methods_for). None when no
    prediction id is in `split`.
    """
    from cifake_lib.viz.gallery import GROUPS, confident_picks

    picked = confident_picks(run, split, per_group)
    if picked is None:
        return None
    rows, split_rows, groups = picked
    preds = run["predictions"]
    picks = [(g[0], int(rows[i]), int(split_rows[i])) for g in GROUPS for i in groups[g[0]]]
    if not picks:
        return None
    if methods is None:
        methods = [m for m in methods_for(detector) if m != "occlusion"][:2] or ["occlusion"]
    images, titles, maps = [], [], {m: [] for m in methods}
    for key, i, j in picks:
        image = split.images[j]
        cls = int(preds["cifar_class"][i])
        images.append(image)
        titles.append(f"{key.replace('_', ' ')}\np={format_metric(preds['p_fake'][i], digits=3)}")
        for m in methods:
            maps[m].append(saliency(detector, image, m, cifar_class=cls))
    return saliency_figure(images, maps, titles=titles,
                                   suptitle=f"{run.get('name') or run['metrics']['detector']}: saliency ({', '.join(methods)}; target: the "
                                            "detector's decision)")
