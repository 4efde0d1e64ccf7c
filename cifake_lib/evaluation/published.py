"""Published results on CIFAKE (published.toml): cited, checked, never mixed with ours.

Each entry of published.toml is one published number with its source (authors, year, venue,
title, arXiv id / DOI / URL), the split it was measured on and its published precision
(`text`, e.g. "92.98%", or "≈95%" for a figure given only approximately). This module reads
that file and renders it: anchors for `plots.compare_bar` (an approximate figure as its text,
drawn hollow), table rows, the report's References list, and the dated claim of absence.

A zero-shot figure tunes no threshold, so `compared_with` says it is set beside our
accuracy at 0.5 (`acc@0.5`), never beside an accuracy at a threshold tuned on validation.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

from cifake_lib.core.formatting import format_metric

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SETTINGS = ("zero-shot", "probe", "supervised", "fine-tuned")
METRICS = ("accuracy", "roc_auc")
REQUIRED = ("name", "setting", "model", "metric", "value", "text", "split", "authors", "year", "venue", "title")


def _check(entry: Mapping[str, Any], i: int) -> dict[str, Any]:
    where = f"published.toml result #{i + 1}"
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    if not any(entry.get(k) for k in ("arxiv", "doi", "url")):
        raise ValueError(f"{where} ({entry['name']}): needs a source (arxiv, doi or url)")
    if entry["metric"] not in METRICS:
        raise ValueError(f"{where}: metric must be one of {METRICS}, got {entry['metric']!r}")
    if entry["setting"] not in SETTINGS:
        raise ValueError(f"{where}: setting must be one of {SETTINGS}, got {entry['setting']!r}")
    if not 0.0 <= float(entry["value"]) <= 1.0:
        raise ValueError(f"{where}: value must be a fraction in [0, 1], got {entry['value']!r}")
    return {**entry, "value": float(entry["value"]), "approximate": bool(entry.get("approximate", False))}


RELATED_REQUIRED = ("authors", "year", "venue", "title", "what")


@lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    text = resources.files("cifake_lib.evaluation").joinpath("published.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


@lru_cache(maxsize=1)
def _load() -> tuple[str, tuple[dict[str, Any], ...]]:
    data = _data()
    return str(data.get("checked", "")), tuple(_check(e, i) for i, e in enumerate(data.get("result", [])))


def related_works() -> list[dict[str, Any]]:
    """published.toml's [[related]] entries: cited work with no CIFAKE number (copies, checked)."""
    out = []
    for i, e in enumerate(_data().get("related", [])):
        missing = [k for k in RELATED_REQUIRED if k not in e]
        if missing or not any(e.get(k) for k in ("arxiv", "doi", "url")):
            raise ValueError(f"published.toml related #{i + 1}: missing field(s) {missing or ['arxiv/doi/url']}")
        out.append(dict(e))
    return out


def published_results(*, metric: str | None = None, setting: str | None = None,
                      names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The entries of published.toml (copies), filtered by metric, setting and/or name."""
    out = []
    for e in _load()[1]:
        if (metric is None or e["metric"] == metric) and (setting is None or e["setting"] == setting) \
                and (names is None or e["name"] in names):
            out.append(dict(e))
    return out


def checked() -> str:
    """When the sources were last checked (published.toml's `checked`), e.g. "November 2026"."""
    return _load()[0]


def cite(entry: Mapping[str, Any]) -> str:
    """Short citation: "Bird & Lotfi 2024"."""
    return f"{entry['authors']} {entry['year']}"


def compared_with(entry: Mapping[str, Any]) -> str:
    """Which of our figures a published one is set beside: acc@0.5 for zero-shot accuracy."""
    if entry["metric"] == "accuracy":
        return "acc@0.5" if entry["setting"] == "zero-shot" else "accuracy"
    return entry["metric"]


def published_anchors(metric: str = "roc_auc", names: Sequence[str] | None = None, *,
                      setting: str | None = None, approximate: bool = True) -> dict[str, float | str]:
    """{"name (Authors Year)": value} for `plots.compare_bar(published=...)`: every published result
    of `metric` (and `setting`), as the published-results table lists them.

    An approximate figure ("≈95%") is given as its published text, which compare_bar draws as a
    hollow diamond labelled with that text: a line at 0.9500 would claim a precision the source
    does not give. `approximate=False` leaves such figures out. Unknown `names` are simply absent.
    """
    return {f"{e['name']} ({cite(e)})": (e["text"] if e["approximate"] else e["value"])
            for e in published_results(metric=metric, setting=setting, names=names)
            if approximate or not e["approximate"]}


def anchors_beside(column: str) -> dict[str, float | str]:
    """`published_anchors` of every result that `anchor_table` and `published_table` set beside our
    `column` ("accuracy", "acc@0.5" or "roc_auc"), so a figure draws the table's published rows."""
    return {f"{e['name']} ({cite(e)})": (e["text"] if e["approximate"] else e["value"])
            for e in published_results() if compared_with(e) == column}


def published_table(metric: str | None = None) -> list[dict[str, Any]]:
    """Rows for a table of published results: every value as published, with its citation."""
    return [{"name": e["name"], "source": "published", "reference": cite(e), "setting": e["setting"],
             "metric": e["metric"], "value": e["text"], "split": e["split"], "compared_with": compared_with(e),
             "model": e["model"]} for e in published_results(metric=metric)]


def _cell(value: Any, ci: Sequence[Any] | None = None, *, percent: bool = False) -> str:
    """format_metric's text; a metric we do not have reads "—", as in the published rows."""
    return "—" if value is None else format_metric(value, ci, percent=percent)


def anchor_table(ours: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """Our runs ({name: metrics dict}; accuracy at the validation threshold and at 0.5, AUC, with
    95% CIs) marked "ours", then the published results at their published precision, cited."""
    rows = []
    for name, m in ours.items():
        rows.append({
            "detector": name, "source": "ours",
            "accuracy": _cell(m.get("accuracy"), m.get("accuracy_ci95"), percent=True),
            "acc@0.5": _cell((m.get("natural_threshold") or {}).get("accuracy"), percent=True),
            "roc_auc": _cell(m.get("roc_auc"), m.get("roc_auc_ci95")),
            "reference": ""})
    for e in published_results():
        value = {"accuracy": "—", "acc@0.5": "—", "roc_auc": "—"}
        value[compared_with(e)] = e["text"]
        rows.append({"detector": e["name"], "source": "published", **value, "reference": cite(e)})
    return rows


def reference(entry: Mapping[str, Any]) -> str:
    """Full reference: authors (year). Title. Venue. DOI / arXiv / URL."""
    ids = []
    if entry.get("doi"):
        ids.append(f"doi:{entry['doi']}")
    if entry.get("arxiv"):
        ids.append(f"arXiv:{entry['arxiv']}")
    if entry.get("url") and not entry.get("arxiv"):
        ids.append(str(entry["url"]))
    return f"{entry['authors']} ({entry['year']}). {entry['title']}. {entry['venue']}. {', '.join(ids)}."


def references() -> list[str]:
    """One full reference per distinct published source, in file order (results, then related work)."""
    return list(dict.fromkeys(reference(e) for e in [*published_results(), *related_works()]))


def absence_claim(*, related: bool = True) -> str:
    """The dated claim that no published result fine-tunes both CLIP encoders on CIFAKE; with
    `related`, followed by the related work that fine-tunes CLIP elsewhere."""
    related = "".join(f" {cite(e)} {e['what']}." for e in related_works()) if related else ""
    return (f"As of {checked()}, we found no published result that fine-tunes both CLIP encoders "
            "(image and text) on CIFAKE, so the finetune:both detector has no published counterpart." + related)


__all__ = ["published_results", "published_anchors", "anchors_beside", "published_table", "anchor_table", "references",
           "reference", "cite", "compared_with", "checked", "absence_claim", "related_works"]
