"""The command line: the spellings of the README, short errors, non-zero exits."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from clfkit.cli import cli

from conftest import TINY


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_recipe_check_prints_resolved_recipe_and_counts(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(TINY))
    res = run("recipe", "check", f, "--set", "train.epochs=2")
    assert res.exit_code == 0, res.output
    assert "epochs: 2" in res.output and "parameters" in res.output and "MACs" in res.output


def test_recipe_typo_is_a_short_error(tmp_path):
    d = dict(TINY, train={"epocs": 3})
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(cli, ["recipe", "check", str(f)])
    assert res.exit_code == 2
    assert "train.epocs: unknown field; did you mean 'epochs'?" in res.output
    assert "Traceback" not in res.output


def test_train_export_predict_via_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "r.yaml"
    d = dict(TINY, train={"epochs": 1, "batch_size": 32})
    f.write_text(yaml.safe_dump(d))
    res = run("train", f, "--out", "runs", "--quiet")
    assert res.exit_code == 0, res.output
    res = run("export", "runs/tiny")
    assert res.exit_code == 0 and "top-1 agreement 100.00%" in res.output
    assert (tmp_path / "exported" / "tiny.onnx").is_file()
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(imgs / "x.png")
    (imgs / "y.png").write_bytes(b"broken")
    res = CliRunner().invoke(cli, ["predict", "exported/tiny.onnx", str(imgs)])
    assert res.exit_code == 0
    assert "wrote 1 predictions to test.txt; skipped 1 file(s)" in res.output
    assert "skipped y.png" in res.output
    assert (tmp_path / "test.txt").read_text().startswith("x.png ")


def test_plugins_lists_builtins_with_provider():
    res = run("plugins")
    assert res.exit_code == 0
    assert "resnet" in res.output and "clfkit" in res.output and "model" in res.output


def test_plugins_show():
    res = run("plugins", "show", "resnet")
    assert res.exit_code == 0 and "stem" in res.output and "'imagenet'" in res.output


def test_missing_run_dir_and_model():
    res = CliRunner().invoke(cli, ["export", "no/such/run"])
    assert res.exit_code != 0 and "does not exist" in res.output
    res = CliRunner().invoke(cli, ["predict", "no.onnx", "."])
    assert res.exit_code != 0 and "does not exist" in res.output


def test_unknown_names_in_plugins_commands_are_short_errors_with_suggestions():
    res = CliRunner().invoke(cli, ["plugins", "show", "resnt"])
    assert res.exit_code == 2 and "did you mean 'resnet'?" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["plugins", "--kind", "modle"])
    assert res.exit_code == 2 and "unknown kind 'modle'; kinds are: model" in res.output
