"""The public API (`import cifake_lib as cl`): light to import, every name its module's own object."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest

import cifake_lib


def test_importing_the_package_imports_no_heavy_library():
    code = ("import sys, cifake_lib; from cifake_lib import LABEL_NAMES, CIFAR_CLASSES, __version__; "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'transformers', "
            "'sklearn', 'matplotlib', 'PIL'}); assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_every_public_name_is_the_object_of_its_module():
    for name in cifake_lib.__all__:
        value = getattr(cifake_lib, name)
        if name in cifake_lib._EXPORTS:
            module, attr = cifake_lib._EXPORTS[name]
            owner = importlib.import_module(module)
            assert value is (owner if attr is None else getattr(owner, attr)), name


def test_no_public_name_is_declared_twice():
    declared = [n if isinstance(n, str) else n[0] for names in cifake_lib._FROM.values() for n in names]
    declared += list(cifake_lib._MODULES)
    assert len(declared) == len(set(declared)) == len(cifake_lib._EXPORTS)


def test_what_a_notebook_imports():
    from cifake_lib import (
        FinetuneConfig,
        ProbeConfig,
        load_cifake,
        load_detector,
        predict,
        run_probe,
    )
    from cifake_lib.app import stages
    from cifake_lib.data import load
    from cifake_lib.methods import detectors, finetune_config, probe
    from cifake_lib.methods import predict as predict_module

    assert load_cifake is load.load_cifake and load_detector is detectors.load_detector
    assert predict is predict_module.predict and FinetuneConfig is finetune_config.FinetuneConfig
    # the runners are the methods' own run(data, cfg, out), the functions `cifake <stage>` calls
    assert run_probe is probe.run and stages.STAGES["probe"].module == probe.__name__
    assert ProbeConfig().hidden == 512  # a settings dataclass: built with its defaults
    from cifake_lib import report, robustness

    assert report.__name__ == "cifake_lib.analysis.report" and callable(robustness.run_battery)


def test_dir_lists_the_public_names_and_an_unknown_name_says_where_to_look():
    assert set(cifake_lib.__all__) <= set(dir(cifake_lib))
    with pytest.raises(AttributeError, match="did you mean load_cifake") as e:
        cifake_lib.load_cifak  # noqa: B018
    assert "cifake_lib.__all__" in str(e.value)
    with pytest.raises(ImportError, match="no_such_thing"):
        exec("from cifake_lib import no_such_thing", {})


def test_a_probe_through_the_public_api(sample_dir, tiny_model_dir, tmp_path):
    """load_cifake -> run_probe -> predict, only through `cl`: predict gives the run's own test scores."""
    import cifake_lib as cl

    data = cl.load_cifake(str(sample_dir), subset=(120, 40), val_fraction=0.25, progress=False)
    result = cl.run_probe(data, cl.ProbeConfig(model=str(tiny_model_dir), device="cpu", figures=False,
                                               cache=False), tmp_path / "probe")
    assert isinstance(result, cl.RunResult) and result.runs == [tmp_path / "probe"]
    saved = cl.read_predictions(tmp_path / "probe" / "predictions.csv")
    np.testing.assert_array_equal(saved["id"], data.test.ids)
    p = cl.predict(tmp_path / "probe", data.test.images, device="cpu")
    np.testing.assert_allclose(p, saved["p_fake"], atol=1e-5)
    m = cl.compute_metrics(data.test.labels, p, threshold=cl.read_json(tmp_path / "probe" / "detector.json")["threshold"])
    assert m["accuracy"] == pytest.approx(result.metrics["probe"]["accuracy"])
