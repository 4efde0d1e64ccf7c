"""Settings declared once (cifake_lib.core.config) and the CLI generated from them (cifake_lib.app.cli)."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cifake_lib.app.cli import COMMANDS, build_parser, main, read_inputs
from cifake_lib.app.pipeline import PipelineError, RunConfig, split_table
from cifake_lib.core.config import (
    SettingError,
    build,
    option_map,
    options,
    setting,
    to_argv,
    to_mapping,
)
from cifake_lib.data.config import DataConfig
from cifake_lib.methods.cnn_config import CnnStageConfig
from cifake_lib.methods.finetune_config import FinetuneConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# --- the CLI is generated from the dataclasses ---------------------------------------------------


def test_every_setting_is_an_option_with_help():
    subs = _subparsers(build_parser())
    assert list(subs)[0] == "run"
    for c in COMMANDS:
        p = subs[c.name]
        assert p.allow_abbrev is False
        by_dest = {a.dest: a for a in p._actions}
        for key, (_, o) in option_map(c.classes).items():
            action = by_dest[key]
            assert action.help and len(action.help) > 10, f"{c.name} {key}: no help"
            if not o.meta.get("positional"):
                assert o.flags[0] in action.option_strings, (c.name, key)


def test_fine_tuning_field_is_option_toml_key_and_record():
    """A new FinetuneConfig field is an option, a TOML key and a run.json value, with nothing else to edit."""
    keys = {o.key for o in options(FinetuneConfig)}
    sub = _subparsers(build_parser())["finetune"]
    flags = {s for a in sub._actions for s in a.option_strings}
    for o in options(FinetuneConfig):
        assert o.flags[0] in flags
    assert "train_seed" in keys and "out" not in keys and "data" not in keys  # set by the stage, not the user
    parts = split_table("finetune", {"lr": 1e-4, "seed": 3, "no_flip": True})
    cfg = build(FinetuneConfig, parts[FinetuneConfig])
    assert cfg.lr == 1e-4 and cfg.flip is False
    assert to_mapping(cfg)["lr"] == 1e-4
    # the ablations are methods of the study grid now: the old key says where they went
    with pytest.raises(PipelineError, match=r"\[run\] methods"):
        split_table("finetune", {"ablations": ["image"]})


def test_old_option_names_still_work_and_map_to_fields():
    args = build_parser().parse_args(["finetune", "--out", "o", "--no-flip", "--quiet", "--patience", "0",
                                      "--train", "text,image", "--seed", "4"])
    data = build(DataConfig, {k: v for k, v in vars(args).items() if k in {o.key for o in options(DataConfig)}})
    cfg = build(FinetuneConfig, {k: v for k, v in vars(args).items()
                                 if k in {o.key for o in options(FinetuneConfig)}},
                defaults={"train_seed": data.seed})
    assert (cfg.flip, cfg.progress, cfg.patience, cfg.train, cfg.seed) == (False, False, None, "both", 4)
    args = build_parser().parse_args(["cnn", "--out", "o", "--batch-norm", "--no-flip", "--time-limit", "5"])
    cnn = build(CnnStageConfig, {k: v for k, v in vars(args).items() if k in option_map([CnnStageConfig])})
    assert cnn.net.batch_norm and not cnn.train.flip and cnn.train.time_limit == 5.0


def test_to_argv_round_trips():
    values = {"epochs": 2, "no_flip": True, "batch_norm": True, "channels": [16, 8], "time_limit": None}
    argv = to_argv(CnnStageConfig, values)
    assert argv == ["--epochs", "2", "--no-flip", "--batch-norm", "--channels", "16,8"]
    args = build_parser().parse_args(["cnn", "--out", "o", *argv])
    cnn = build(CnnStageConfig, {k: v for k, v in vars(args).items() if k in option_map([CnnStageConfig])})
    assert cnn.net.channels == (16, 8) and cnn.train.epochs == 2 and not cnn.train.flip


# --- validation ----------------------------------------------------------------------------------


def test_unknown_key_names_the_closest_one():
    with pytest.raises(SettingError, match=r"\[finetune\] unknown setting 'epoch' \(did you mean 'epochs'\?\)"):
        build(FinetuneConfig, {"epoch": 5}, where="[finetune]")
    with pytest.raises(SettingError, match="unknown setting 'epochz'"):
        split_table("cnn", {"epochz": 1})


@pytest.mark.parametrize("cls, values, message", [
    (FinetuneConfig, {"epochs": "five"}, "epochs must be an integer"),
    (FinetuneConfig, {"epochs": 2.5}, "epochs must be an integer"),
    (FinetuneConfig, {"lr": "fast"}, "lr must be a number"),
    (DataConfig, {"dedup": 1}, "dedup must be true or false"),
    (RunConfig, {"seeds": [0, "x"]}, "seeds .*must be an integer"),
    (FinetuneConfig, {"epochs": 0}, "epochs must be >= 1, got 0"),
    (FinetuneConfig, {"lr": 0.0}, "lr must be > 0"),
    (DataConfig, {"val_fraction": 1.0}, "val_fraction must be < 1"),
    (FinetuneConfig, {"loss": "hinge"}, "loss must be one of flyp, ce, clip-label-aware"),
    (FinetuneConfig, {"train": "vision"}, "train must be both, image, text"),
    (FinetuneConfig, {"lp_ft": True, "train": "text"}, "lp_ft .* needs train=both"),
    (DataConfig, {"subset": "1600"}, "subset: wants TRAIN:TEST"),
    (RunConfig, {"stages": ["data", "fintune"]}, "stages must be one of"),
    (RunConfig, {"seeds": [1, 1]}, "seeds must be distinct"),
    (CnnStageConfig, {"time_limit": -1}, "time_limit must be > 0"),
])
def test_bad_values_are_refused_with_the_setting_named(cls, values, message):
    with pytest.raises(SettingError, match=message):
        build(cls, values)


def test_cli_errors_name_the_flag_and_exit_2(tmp_path, capsys):
    assert main(["cnn", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--epochs", "0"]) == 2
    assert "cifake cnn: error: --epochs must be >= 1, got 0" in capsys.readouterr().err
    assert main(["finetune", "--out", str(tmp_path), "--mixed-precision", "fp8"]) == 2
    assert "--mixed-precision must be one of" in capsys.readouterr().err


def test_abbreviations_are_refused(capsys):
    for argv in (["cnn", "--out", "o", "--epoch", "1"], ["run", "--print"], ["finetune", "--out", "o", "--lr-", "1"]):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(argv)
        assert e.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err


def test_nested_settings_must_not_collide():
    @dataclass
    class A:
        epochs: int = setting(1, "a")

    @dataclass
    class B:
        epochs: int = setting(2, "b")

    with pytest.raises(TypeError, match="epochs"):
        option_map([A, B])


# --- a light --help, a closed pipe, stdin ---------------------------------------------------------


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from cifake_lib.app.cli import COMMANDS, main\n"
        "for argv in [['--help']] + [[c.name, '--help'] for c in COMMANDS]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'sklearn', 'matplotlib', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: cifake run" in proc.stdout and "--train-seed" in proc.stdout


def test_print_config_into_a_closed_pipe_has_no_traceback(sample_dir):
    proc = subprocess.Popen([sys.executable, "-m", "cifake_lib", "run", "--preset", "smoke", "--data",
                             str(sample_dir), "--print-config"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written, as with `| head -0`
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 141


def test_print_config_is_the_checked_merged_config(sample_dir, tmp_path, capsys):
    user = tmp_path / "u.toml"
    user.write_text("[finetune]\nlr = 2e-4\n[run]\nseeds = [0, 1]\n")
    assert main(["run", "--preset", "smoke", "--data", str(sample_dir), "--config", str(user), "--print-config"]) == 0
    printed = capsys.readouterr().out
    config = tomllib.loads(printed)
    assert config["finetune"]["lr"] == 2e-4 and config["finetune"]["epochs"] == 3  # given, then the default
    assert config["run"]["seeds"] == [0, 1] and config["data"]["subset"] == [1600, 400]
    assert "model" not in config["finetune"] and config["methods"]["ce"] == {"stage": "finetune", "loss": "ce",
                                                                           "wise_ft": []}
    # what it prints, --config reads back: the same config again, for the smoke and the report preset
    for preset in ("smoke", "report"):
        argv = ["run", "--preset", preset, "--data", str(sample_dir), "--print-config"]
        assert main([*argv, *(["--config", str(user)] if preset == "smoke" else [])]) == 0
        first = capsys.readouterr().out
        saved = tmp_path / f"{preset}.toml"
        saved.write_text(first)
        assert main([*argv, "--config", str(saved)]) == 0
        assert capsys.readouterr().out == first
    user.write_text("[finetune]\nlr = -1\n")
    assert main(["run", "--preset", "smoke", "--data", str(sample_dir), "--config", str(user), "--print-config"]) == 2
    assert "[finetune] (flyp) lr must be > 0" in capsys.readouterr().err  # the table, and the method it built


def test_predict_dash_reads_paths_from_stdin():
    stdin = io.StringIO("a.png\n\n b c.jpg\r\nd.png")
    assert read_inputs(["x.png", "-", "y.png"], stdin) == ["x.png", "a.png", " b c.jpg", "d.png", "y.png"]


def test_predict_cli_with_stdin(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    paths = []
    for i in range(2):
        p = tmp_path / f"img {i}.png"
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(p)
        paths.append(str(p))
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(paths) + "\n"))
    assert main(["predict", "--model", str(tiny_model_dir), "--device", "cpu", "-"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["path"] for x in lines] == paths
