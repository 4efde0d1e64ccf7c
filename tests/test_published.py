"""Published anchors (evaluation/published.toml): cited, checked, at their published precision."""

from __future__ import annotations

import pytest

from cifake_lib.evaluation import published as pub


def test_every_entry_is_cited_with_a_source():
    rows = pub.published_results()
    assert rows, "published.toml holds no result"
    for e in rows:
        assert e["authors"] and e["year"] and e["venue"] and e["title"] and e["split"]
        assert e.get("arxiv") or e.get("doi") or e.get("url")
        assert e["text"]  # as published
    assert pub.checked()


def test_cifake_paper_at_published_precision():
    (paper,) = pub.published_results(names=["CIFAKE paper CNN"])
    assert paper["value"] == pytest.approx(0.9298) and paper["text"] == "92.98%"
    assert paper["arxiv"] == "2303.14126" and pub.cite(paper) == "Bird & Lotfi 2024"
    assert pub.published_anchors("accuracy", ["CIFAKE paper CNN"]) == {"CIFAKE paper CNN (Bird & Lotfi 2024)": 0.9298}


def test_approximate_figures_stay_notes():
    approx = [e for e in pub.published_results() if e["approximate"]]
    assert approx and all(e["text"].startswith("≈") for e in approx)
    anchors = pub.published_anchors("accuracy")  # drawn as in the table: their published text, not a number
    assert all(anchors[f"{e['name']} ({pub.cite(e)})"] == e["text"] for e in approx)
    assert not any(e["name"] in label for e in approx for label in pub.published_anchors("accuracy", approximate=False))
    table = {r["name"]: r for r in pub.published_table()}
    assert all(table[e["name"]]["value"] == e["text"] for e in approx)


def test_zero_shot_figures_are_compared_with_acc_at_half():
    assert pub.compared_with({"metric": "accuracy", "setting": "zero-shot"}) == "acc@0.5"
    assert pub.compared_with({"metric": "accuracy", "setting": "supervised"}) == "accuracy"
    assert pub.compared_with({"metric": "roc_auc", "setting": "zero-shot"}) == "roc_auc"


def test_anchor_table_references_and_absence_claim():
    rows = pub.anchor_table({"probe": {"accuracy": 0.9, "natural_threshold": {"accuracy": 0.85}, "roc_auc": 0.95,
                                       "accuracy_ci95": [0.88, 0.92]}})
    assert rows[0] == {"detector": "probe", "source": "ours", "accuracy": "90.00% [88.00%, 92.00%]",
                       "acc@0.5": "85.00%", "roc_auc": "0.9500", "reference": ""}
    paper = next(r for r in rows if r["detector"] == "CIFAKE paper CNN")
    assert paper["accuracy"] == "92.98%" and paper["reference"] == "Bird & Lotfi 2024"
    refs = pub.references()
    assert any("arXiv:2303.14126" in r and "doi:10.1109/ACCESS.2024.3356122" in r for r in refs)
    assert pub.absence_claim().startswith(f"As of {pub.checked()}, we found no published result")


def test_a_malformed_entry_is_refused():
    with pytest.raises(ValueError, match="needs a source"):
        pub._check({k: "x" for k in pub.REQUIRED} | {"metric": "accuracy", "setting": "probe", "value": 0.5}, 0)
    with pytest.raises(ValueError, match="fraction"):
        pub._check({k: "x" for k in pub.REQUIRED} | {"metric": "accuracy", "setting": "probe", "value": 92.98,
                                                     "url": "u"}, 0)


def test_the_adaptation_anchors_are_cited_with_their_arxiv_ids():
    """The works the method axis is set against (CLIPping the Deception, AdaptPrompt, RINE, DeeCLIP)
    and the CLIP fine-tuning work without CIFAKE are in Related Works and References, by arXiv id."""
    by_id = {e.get("arxiv"): e for e in pub.related_works()}
    expected = {"2402.12927": "Khan & Dang-Nguyen 2024", "2512.17730": "Jiang et al. 2025",
                "2402.19091": "Koutlis & Papadopoulos 2024", "2504.19876": "Keita et al. 2025",
                "2404.08788": "Moskowitz, Gaona & Peterson 2024"}
    assert {i: pub.cite(by_id[i]) for i in expected if i in by_id} == expected
    refs = pub.references()
    for arxiv_id in expected:
        assert sum(f"arXiv:{arxiv_id}" in r for r in refs) == 1, arxiv_id
    assert "International Conference on Multimedia Retrieval" in by_id["2402.12927"]["venue"]
    assert "ECCV" in by_id["2402.19091"]["venue"]
