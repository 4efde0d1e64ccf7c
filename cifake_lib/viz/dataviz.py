"""Looking at CIFAKE (notebook 01): example grids, class balance, duplicates, spectra, pixel statistics.

The computations (`mean_power_spectrum`, `pixel_stats`) are plain functions on uint8 arrays
(N, H, W, 3); each `*_figure` returns a matplotlib Figure built like those of `cifake_lib.viz.plots`
(`matplotlib.figure.Figure`, no pyplot: nothing is shown twice or kept alive in a notebook).
Save one with `cifake_lib.viz.plots.save_figure`. Labels: 1 = FAKE, 0 = REAL.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from cifake_lib import CIFAR_CLASSES, LABEL_NAMES
from cifake_lib.data.load import CifakeData, Split, find_duplicates
from cifake_lib.viz.plots import COLORS  # REAL blue, FAKE red, as in every figure

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's convert("L")


# ---------------------------------------------------------------------------
# Computations
# ---------------------------------------------------------------------------


def mean_power_spectrum(images: np.ndarray, *, batch: int = 2048) -> np.ndarray:
    """Mean 2-D Fourier power |F|^2 of the images' luminance, centred (DC in the middle), (H, W).

    Each image's mean is removed first, so the DC term (overall brightness) does not swamp
    the rest. Batched: memory stays bounded for 100,000 images. Plot `np.log10` of it.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"mean_power_spectrum: expected images (N, H, W, 3) with N > 0, got shape {images.shape}")
    total = np.zeros(images.shape[1:3])
    for s in range(0, len(images), batch):
        gray = images[s:s + batch].astype(np.float32) @ _LUMA.astype(np.float32)
        gray -= gray.mean(axis=(1, 2), keepdims=True)
        total += (np.abs(np.fft.fft2(gray)) ** 2).sum(axis=0)
    return np.fft.fftshift(total / len(images))


def pixel_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel (R, G, B) statistics of uint8 images: "hist" (3, 256) counts, "mean" and "std" (3,).

    Mean and std come from the exact histograms (no float copy of the images).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"pixel_stats: expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    hist = np.stack([np.bincount(images[..., c].ravel(), minlength=256) for c in range(3)])
    levels = np.arange(256)
    n = np.maximum(hist.sum(axis=1), 1)
    mean = hist @ levels / n
    std = np.sqrt(hist @ levels.astype(np.float64) ** 2 / n - mean**2)
    return {"hist": hist, "mean": mean, "std": std}


def _splits(data: CifakeData | Mapping[str, Split] | Split) -> dict[str, Split]:
    if isinstance(data, CifakeData):
        return data.splits()
    if isinstance(data, Split):
        return {"data": data}
    return dict(data)


def _by_label(split: Split) -> dict[int, np.ndarray]:
    out = {label: split.images[split.labels == label] for label in (0, 1)}
    for label, images in out.items():
        if not len(images):
            raise ValueError(f"no {LABEL_NAMES[label]} images in this split")
    return out


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


def examples_figure(split: Split, *, per_class: int = 4, seed: int = 0) -> Figure:
    """A grid of random examples: one row per CIFAR class, `per_class` REAL then FAKE images.

    Rows for classes with no image are left out; unknown classes (-1, the Hub) form one row.
    """
    rng = np.random.default_rng(seed)
    rows = [c for c in [*range(10), -1] if (split.classes == c).any()]
    fig = Figure(figsize=(1.0 * 2 * per_class + 1.2, 1.0 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), 2 * per_class, squeeze=False)
    for r, c in enumerate(rows):
        for label in (0, 1):
            idx = np.flatnonzero((split.classes == c) & (split.labels == label))
            picks = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
            for k in range(per_class):
                ax = axes[r, label * per_class + k]
                ax.set_xticks([])
                ax.set_yticks([])
                if k < len(picks):
                    ax.imshow(split.images[picks[k]], interpolation="nearest")
                for spine in ax.spines.values():
                    spine.set_color(COLORS[label])
                    spine.set_linewidth(2)
                if r == 0 and k == 0:
                    ax.set_title(LABEL_NAMES[label], loc="left", color=COLORS[label], fontsize="small")
        axes[r, 0].set_ylabel(CIFAR_CLASSES[c] if c >= 0 else "unknown", rotation=0, ha="right",
                              va="center", fontsize="small")
    fig.suptitle(f"REAL (CIFAR-10) vs FAKE (Stable Diffusion 1.4): {per_class} random images per class")
    return fig


def class_balance_figure(data: CifakeData | Mapping[str, Split] | Split) -> Figure:
    """Image counts per CIFAR class, REAL and FAKE side by side, one panel per split."""
    splits = _splits(data)
    fig = Figure(figsize=(5.5 * len(splits), 3.8), layout="constrained")
    axes = fig.subplots(1, len(splits), squeeze=False)[0]
    for ax, (name, split) in zip(axes, splits.items(), strict=True):
        known = (split.classes >= 0).any()
        names = list(CIFAR_CLASSES) if known else ["all (class unknown)"]
        x = np.arange(len(names))
        for label in (0, 1):
            sel = split.labels == label
            counts = np.bincount(split.classes[sel], minlength=10) if known else [sel.sum()]
            bars = ax.bar(x + (label - 0.5) * 0.4, counts, width=0.4, color=COLORS[label],
                          label=f"{LABEL_NAMES[label]} ({int(sel.sum()):,})")
            ax.bar_label(bars, fmt="{:,.0f}", fontsize="xx-small", padding=1)
        ax.set_xticks(x, names, rotation=45 if known else 0, ha="right" if known else "center")
        ax.set(title=f"{name}: {len(split):,} images", ylabel="images")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.18)  # headroom for the legend
        ax.legend(fontsize="small", loc="upper center", ncols=2)
    return fig


def duplicates_figure(data: CifakeData | Mapping[str, Split] | Split, *, max_groups: int = 8) -> Figure:
    """Identical images shown side by side (one row per group, ids as titles), counts in the title."""
    splits = _splits(data)
    groups = find_duplicates(splits)
    counts: dict[str, int] = {}
    for g in groups:
        for a in range(len(g)):
            for b in range(a + 1, len(g)):
                key = " / ".join(sorted({g[a][0], g[b][0]})) if g[a][0] != g[b][0] else f"within {g[a][0]}"
                counts[key] = counts.get(key, 0) + 1
    shown = groups[:max_groups]
    if not shown:  # the empty state, in words: no canvas of blank panels
        total = sum(len(split) for split in splits.values())
        fig = Figure(figsize=(6.5, 0.9), layout="constrained")
        ax = fig.add_subplot()  # an axes, even blank: notebooks draw no figure without one (only its repr)
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"No identical images: all {total:,} images of {' / '.join(splits)} differ\n"
                "(compared pixel by pixel)", ha="center", va="center", transform=ax.transAxes)
        return fig
    width = max(len(g) for g in shown)
    fig = Figure(figsize=(2.6 * width, 2.3 * len(shown) + 0.5), layout="constrained")
    summary = ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items()))
    more = f", first {len(shown)} shown" if len(shown) < len(groups) else ""
    fig.suptitle(f"identical images: {len(groups):,} group(s){more}\npairs {summary}", fontsize="medium")
    axes = fig.subplots(len(shown), width, squeeze=False)
    for r, group in enumerate(shown):
        for k in range(width):
            ax = axes[r, k]
            ax.set_axis_off()
            if k < len(group):
                name, i = group[k]
                split = splits[name]
                ax.imshow(split.images[i], interpolation="nearest")
                ax.set_title(f"{name}: {split.ids[i]}", fontsize="x-small", color=COLORS[int(split.labels[i])])
    return fig


def spectrum_figure(split: Split) -> Figure:
    """Mean log10 power spectrum of REAL, of FAKE, and their difference (FAKE - REAL), centred."""
    logs = {}
    for label, images in _by_label(split).items():
        power = mean_power_spectrum(images)
        power[power.shape[0] // 2, power.shape[1] // 2] = np.nan  # DC: ~0 once the mean is removed
        logs[label] = np.log10(power)
    diff = logs[1] - logs[0]
    fig = Figure(figsize=(13, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    lo = min(np.nanmin(v) for v in logs.values())
    hi = max(np.nanmax(v) for v in logs.values())
    h, w = diff.shape
    extent = (-(w // 2) - 0.5, w - w // 2 - 0.5, h - h // 2 - 0.5, -(h // 2) - 0.5)
    for ax, label in zip(axes[:2], (0, 1), strict=True):
        im = ax.imshow(logs[label], cmap="viridis", vmin=lo, vmax=hi, extent=extent)
        ax.set_title(f"{LABEL_NAMES[label]}: mean log10 power")
        fig.colorbar(im, ax=ax, shrink=0.85)
    span = float(np.nanmax(np.abs(diff))) or 1.0
    im = axes[2].imshow(diff, cmap="RdBu_r", vmin=-span, vmax=span, extent=extent)
    axes[2].set_title("FAKE - REAL (log10 ratio; red: more power in FAKE)")
    fig.colorbar(im, ax=axes[2], shrink=0.85)
    for ax in axes:
        ax.set(xlabel="horizontal frequency", ylabel="vertical frequency")
    fig.suptitle("Fourier power spectrum of the luminance (per-image mean removed; DC at the centre)")
    return fig


def pixel_stats_figure(split: Split) -> Figure:
    """Per-channel pixel-value histograms, REAL vs FAKE, with means and standard deviations."""
    stats = {label: pixel_stats(images) for label, images in _by_label(split).items()}
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    top = 0.0
    for c, (ax, channel) in enumerate(zip(axes, ("red", "green", "blue"), strict=True)):
        for label, s in stats.items():
            density = s["hist"][c] / max(s["hist"][c].sum(), 1)
            top = max(top, density[1:255].max())
            ax.plot(np.arange(256), density, color=COLORS[label],
                    label=f"{LABEL_NAMES[label]}: mean {s['mean'][c]:.1f}, sd {s['std'][c]:.1f}, "
                    f"at 0/255: {density[0]:.1%}/{density[255]:.1%}")
        ax.set(title=channel, xlabel="pixel value", xlim=(0, 255))
        ax.legend(fontsize="x-small", loc="upper center")
    # The saturated ends (0, 255) can be ten times higher than the rest: scale to the rest.
    axes[0].set_ylim(0, top * 1.35)
    axes[0].set_ylabel("share of pixels")
    fig.suptitle("Pixel statistics per channel")
    return fig
