"""Without a reachable Hub, loading `--data hf` runs in offline mode: it fails at once, not after retries."""

from __future__ import annotations

import pytest

from cifake_lib.core import network
from cifake_lib.data import sources


def test_unreachable_hub_loads_in_offline_mode_and_restores_the_flags(monkeypatch):
    datasets = pytest.importorskip("datasets")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(network, "hub_reachable", lambda timeout=0: False)
    seen = []

    def load_dataset(repo):
        seen.append((constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE))
        raise ConnectionError(f"Couldn't reach '{repo}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(sources.DataSourceError, match=r"could not load CIFAKE from the Hugging Face Hub .*--data DIR"):
        sources.load_hf_dataset("someone/cifake")
    assert seen == [(True, True)]  # offline while loading ...
    assert constants.HF_HUB_OFFLINE is False and datasets.config.HF_HUB_OFFLINE is False  # ... and only then


def test_reachable_hub_or_offline_already_changes_nothing(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(network, "hub_reachable", lambda timeout=0: True)
    with network.offline_unless_hub_reachable() as went_offline:
        assert not went_offline and constants.HF_HUB_OFFLINE is False
    probes = []
    monkeypatch.setattr(network, "hub_reachable", lambda timeout=0: probes.append(1) or False)
    for mod, name in network._offline_flags():
        monkeypatch.setattr(mod, name, True)
    with network.offline_unless_hub_reachable() as went_offline:
        assert not went_offline and probes == []  # HF_HUB_OFFLINE=1: no probe at all


def test_probe_of_an_unresolvable_host_says_no(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid:8443")
    assert network.hub_endpoint() == ("hub.invalid", 8443)
    assert network.hub_reachable(timeout=1.0) is False  # .invalid never resolves (RFC 2606)
