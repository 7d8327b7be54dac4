"""Plugins: discovery through entry points, attribution, failure isolation, contracts, the
scaffold, and the plugins shipped in plugins/.

Failure tests build throwaway distributions in a tmp dir (a ``*.dist-info`` folder with
METADATA and entry_points.txt next to a module, put on sys.path) and load them into a fresh
``Registry()``, so they do not depend on what is installed: they only look at their own
distributions, whatever else the scan finds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
import torch
from click.testing import CliRunner

from clfkit import registry
from clfkit.errors import ClfkitError, RegistryError
from clfkit.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- throwaway plugins
@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path where ``make(...)`` writes throwaway plugin distributions."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("CLFKIT_PLUGINS", raising=False)
    # module names must be unique per test: Python imports a module once per process
    tag = f"t{abs(hash(str(tmp_path))) % 10**8}"

    def make(
        dist: str, code: str, *, entry: str = "", requires: tuple[str, ...] = (), version: str = "1.0"
    ) -> str:
        module = f"{dist.replace('-', '_')}_{tag}"
        (folder / f"{module}.py").write_text(textwrap.dedent(code))
        info = folder / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        meta = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
        (info / "METADATA").write_text(meta)
        target = f"{module}:{entry}" if entry else module
        (info / "entry_points.txt").write_text(f"[clfkit.plugins]\n{dist} = {target}\n")
        return module

    make.tag = tag
    return make


def fresh() -> Registry:
    reg = Registry()
    reg.load()
    return reg


def errors_of(reg: Registry, dist: str) -> list[str]:
    return [str(e) for e in reg.plugin_errors if e.dist == dist]


GOOD = """
    import torch.nn as nn
    from clfkit.registry import register

    @register("norm", "acme_identity")
    def acme_identity(num_features: int, dim: int = 2, gain: float = 1.0) -> nn.Module:
        '''Identity norm from a throwaway plugin.'''
        return nn.Identity()
"""


def test_plugin_found_through_entry_point_with_distribution_and_version(site):
    site("acme-good", GOOD, version="2.3")
    reg = fresh()
    entry = reg.get("norm", "acme_identity")
    assert (entry.provider, entry.version) == ("acme-good", "2.3")
    assert ("acme-good", "2.3") in reg.plugins
    assert reg.get("norm", "batch").provider == "clfkit"  # a fresh registry has the built-ins
    assert errors_of(reg, "acme-good") == []
    # the global registry was not touched by the private one's plugin
    assert "acme_identity" not in registry.REGISTRY._entries["norm"]


def test_entry_point_may_name_a_function_to_call(site):
    site(
        "acme-func",
        """
        import torch.nn as nn
        def setup():
            from clfkit.registry import register
            register("activation", "acme_act")(lambda: nn.ReLU())
        VALUE = 3
    """,
        entry="setup",
    )
    site("acme-value", "VALUE = 3\n", entry="VALUE")
    reg = fresh()
    assert reg.get("activation", "acme_act").provider == "acme-func"
    (msg,) = errors_of(reg, "acme-value")
    assert "names a int; it must name a module or a function" in msg


def test_import_error_is_isolated_and_named(site):
    site("acme-good", GOOD)
    site(
        "acme-broken",
        """
        from clfkit.registry import register
        register("norm", "acme_half")(lambda num_features, dim=2: None)
        import acme_dependency_that_is_not_installed
    """,
    )
    reg = fresh()
    (msg,) = errors_of(reg, "acme-broken")
    assert msg.startswith("plugin acme-broken")
    assert "ModuleNotFoundError" in msg and "acme_dependency_that_is_not_installed" in msg
    assert "acme_half" not in reg.names("norm")  # what it registered before failing is rolled back
    assert "acme_identity" in reg.names("norm") and "batch" in reg.names("norm")  # the rest works
    with pytest.raises(RegistryError, match="Note: plugin acme-broken"):
        reg.get("norm", "acme_half")


def test_clash_with_a_builtin_names_both_and_rolls_back(site):
    site(
        "acme-clash",
        """
        import torch.nn as nn
        from clfkit.registry import register
        register("norm", "acme_fine")(lambda num_features, dim=2: nn.Identity())
        register("norm", "batch")(lambda num_features, dim=2: nn.Identity())
    """,
    )
    reg = fresh()
    (msg,) = errors_of(reg, "acme-clash")
    assert "norm 'batch' is registered twice: by clfkit and by acme-clash" in msg
    assert "acme_fine" not in reg.names("norm")
    assert reg.get("norm", "batch").provider == "clfkit"


def test_clash_between_two_plugins(site):
    code = """
        import torch.nn as nn
        from clfkit.registry import register
        register("model", "acme_dup")(lambda num_classes: nn.Linear(1, num_classes))
    """
    site("acme-one", code)
    site("acme-two", code)
    reg = fresh()
    winner = reg.get("model", "acme_dup").provider
    loser = {"acme-one": "acme-two", "acme-two": "acme-one"}[winner]
    (msg,) = errors_of(reg, loser)
    assert f"registered twice: by {winner} and by {loser}" in msg
    assert errors_of(reg, winner) == []


def test_non_callable_registration(site):
    site(
        "acme-const",
        """
        from clfkit.registry import register
        register("model", "acme_const")(42)
    """,
    )
    reg = fresh()
    (msg,) = errors_of(reg, "acme-const")
    assert "model 'acme_const' from acme-const is a int, not a function or class" in msg
    assert "acme_const" not in reg.names("model")


def test_signature_contract_checked_at_registration(site):
    site(
        "acme-sig",
        """
        import torch.nn as nn
        from clfkit.registry import register
        register("model", "acme_nosig")(lambda width=3: nn.Linear(1, 1))
    """,
    )
    reg = fresh()
    (msg,) = errors_of(reg, "acme-sig")
    assert "model 'acme_nosig' from acme-sig breaks the model contract" in msg
    assert "must accept num_classes" in msg


def test_minimum_clfkit_version(site):
    from clfkit import __version__

    site(
        "acme-future",
        "raise RuntimeError('must not be imported')\n",
        requires=("clfkit>=99.0", "pytest; extra == 'test'"),
    )
    site("acme-now", GOOD, requires=(f"clfkit>={__version__}", "clfkit<99; extra == 'old'"))
    reg = fresh()
    (msg,) = errors_of(reg, "acme-future")
    assert f"requires clfkit>=99.0 but clfkit {__version__} is installed; upgrade clfkit" in msg
    assert errors_of(reg, "acme-now") == [] and "acme_identity" in reg.names("norm")


def test_plugins_none_starts_with_builtins_only(site, monkeypatch):
    site("acme-good", GOOD)
    monkeypatch.setenv("CLFKIT_PLUGINS", "none")
    reg = fresh()
    assert reg.plugins == [] and reg.plugin_errors == []
    assert "acme_identity" not in reg.names("norm") and "batch" in reg.names("norm")


# --------------------------------------------------------------------------- contracts at first use
BAD_AT_USE = """
    import torch
    from clfkit.registry import register

    class NoHooks:
        pass

    class WrongHook:
        def on_batch(self, x, y):  # the trainer calls on_batch(x, y, num_classes)
            return x, y

    class BatchedWrong:
        batched = True
        def __call__(self, x):  # must take (x, generator)
            return x

    class PerImageWrong:
        def __call__(self, img):  # must be called as t(image=...)
            return img

    register("regularizer", "acme_nohooks")(lambda: NoHooks())
    register("regularizer", "acme_wronghook")(lambda: WrongHook())
    register("augmentation", "acme_batched")(lambda: BatchedWrong())
    register("augmentation", "acme_perimage")(lambda: PerImageWrong())
    register("augmentation", "acme_string")(lambda: "flip")
    register("model", "acme_int")(lambda num_classes: 3)
    register("optimizer", "acme_opt")(lambda params: params)
"""


@pytest.mark.parametrize(
    "kind, name, args, expected",
    [
        (
            "regularizer",
            "acme_nohooks",
            {},
            "at least one of the methods on_model, on_param_groups, on_batch, on_loss, before_step",
        ),
        (
            "regularizer",
            "acme_wronghook",
            {},
            "WrongHook.on_batch has the signature (x, y); the "
            "regularizer contract calls it as on_batch(x, y, num_classes)",
        ),
        ("augmentation", "acme_batched", {}, "calls it as __call__(x, generator)"),
        ("augmentation", "acme_perimage", {}, "a per-image transform called as t(image="),
        ("augmentation", "acme_string", {}, "returned a str; the augmentation contract expects a callable"),
        ("model", "acme_int", {"num_classes": 2}, "returned a int; the model contract expects a torch.nn"),
        (
            "optimizer",
            "acme_opt",
            {"params": [torch.zeros(1, requires_grad=True)]},
            "returned a list; the optimizer contract expects a torch.optim",
        ),
    ],
)
def test_result_contract_checked_at_first_use(site, kind, name, args, expected):
    site("acme-contracts", BAD_AT_USE)
    reg = fresh()
    assert errors_of(reg, "acme-contracts") == []  # registration is fine; building is refused
    with pytest.raises(RegistryError) as e:
        reg.create(kind, name, **args)
    assert f"{kind} {name!r} from acme-contracts" in str(e.value)
    assert expected in str(e.value)


def test_builtin_components_keep_the_contracts():
    """Every built-in regularizer and augmentation passes the checks that plugins face."""
    for kind in ("regularizer", "augmentation"):
        for name in registry.names(kind):
            registry.create(kind, name)


# --------------------------------------------------------------------------- CLI
def test_cli_lists_components_and_broken_plugins(site, monkeypatch):
    from clfkit.cli import cli

    site("acme-good", GOOD, version="2.3")
    site("acme-broken", "raise ImportError('libacme.so: cannot open shared object file')\n")
    monkeypatch.setattr(registry, "REGISTRY", Registry())
    out = CliRunner().invoke(cli, ["plugins", "--kind", "norm"])
    assert out.exit_code == 0, out.output
    row = next(line for line in out.output.splitlines() if "acme_identity" in line)
    assert "acme-good" in row and "2.3" in row and "Identity norm" in row
    assert "broken plugin acme-broken" in out.output and "libacme.so" in out.output
    shown = CliRunner().invoke(cli, ["plugins", "show", "acme_identity"])
    assert shown.exit_code == 0, shown.output
    assert "norm acme_identity  (acme-good 2.3)" in shown.output
    assert "gain: float = 1.0" in shown.output and "num_features" not in shown.output


# --------------------------------------------------------------------------- scaffold
def test_scaffold_refuses_bad_names_and_existing_folders(tmp_path):
    from clfkit.registry.scaffold import new_plugin, plugin_names

    assert plugin_names("My-Nets") == {
        "name": "my_nets",
        "dist": "clfkit-my-nets",
        "module": "clfkit_my_nets",
        "clfkit_version": plugin_names("x")["clfkit_version"],
    }
    for bad in ("1nets", "nets!", "class", ""):
        with pytest.raises(ClfkitError, match="plugin name"):
            new_plugin(bad, tmp_path)
    new_plugin("again", tmp_path)
    with pytest.raises(ClfkitError, match="already exists"):
        new_plugin("again", tmp_path)


def test_shipped_example_is_the_scaffold(tmp_path):
    """plugins/clfkit-example is exactly what `clfkit plugins new example` writes."""
    from clfkit.registry.scaffold import new_plugin

    made = new_plugin("example", tmp_path)
    shipped = ROOT / "plugins" / "clfkit-example"
    for f in sorted(p for p in made.rglob("*") if p.is_file()):
        rel = f.relative_to(made)
        assert (shipped / rel).read_text() == f.read_text(), f"{rel} differs from the template"


def test_scaffold_installs_and_passes_its_own_tests(tmp_path):
    """`clfkit plugins new` -> pip install (no deps, into a target folder) -> its own pytest."""
    from clfkit.cli import cli

    out = CliRunner().invoke(cli, ["plugins", "new", "scaffoldcheck", "--dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    pkg = tmp_path / "clfkit-scaffoldcheck"
    target = tmp_path / "site"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "CLFKIT_PLUGINS": ""}
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-compile",
            "--target",
            str(target),
            str(pkg),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert pip.returncode == 0, pip.stderr
    env["PYTHONPATH"] = str(target) + os.pathsep + env.get("PYTHONPATH", "")
    test = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-o",
            "addopts=",
            "-q",
            "-p",
            "no:cacheprovider",
            str(pkg / "tests"),
        ],
        cwd=target,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "3 passed" in test.stdout


# --------------------------------------------------------------------------- shipped plugins
SMALL = [
    "data.source.train_size=128",
    "data.source.val_size=32",
    "data.source.test_size=32",
    "train.epochs=1",
    "train.device=cpu",
]


def shipped_plugin_registry(dist: str, site_dir: Path, monkeypatch) -> Registry:
    """The registry a user gets after ``pip install -e plugins/<dist>``, made without installing:
    the package's source folder goes on sys.path and a dist-info with its own entry points
    (read from its pyproject.toml) next to it, so the suite needs nothing installed (README
    command 2 as written) and is the same whether or not the plugin is installed."""
    import tomllib

    pkg = ROOT / "plugins" / dist
    project = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
    info = site_dir / f"{dist.replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {project['version']}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in project["dependencies"])
    )
    eps = project["entry-points"]["clfkit.plugins"]
    (info / "entry_points.txt").write_text(
        "[clfkit.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
    )
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.syspath_prepend(str(site_dir))
    monkeypatch.delenv("CLFKIT_PLUGINS", raising=False)
    reg = Registry()
    reg.load()
    assert (dist, project["version"]) in reg.plugins, [str(e) for e in reg.plugin_errors]
    monkeypatch.setattr(registry, "REGISTRY", reg)  # load_recipe and train look components up here
    return reg


@pytest.mark.parametrize(
    "dist,recipe_file,overrides,components",
    [
        (
            "clfkit-example",
            "recipe.yaml",
            ["data.image_size=16", "train.batch_size=32"],
            [
                ("model", "example_net"),
                ("norm", "example_rmsnorm"),
                ("regularizer", "example_l1"),
                ("augmentation", "example_noise"),
            ],
        ),
        (
            "clfkit-airbench",
            "recipes/airbench_shapes.yaml",
            ["model.widths=[8,16,16]", "model.stem_width=8", "train.batch_size=64"],
            [("model", "airbench")],
        ),
    ],
    ids=["example", "airbench"],
)
def test_shipped_plugin_recipe_trains_a_few_steps_on_cpu(
    tmp_path, monkeypatch, dist, recipe_file, overrides, components
):
    from clfkit.recipe import load_recipe
    from clfkit.train.trainer import train

    shipped_plugin_registry(dist, tmp_path / "site", monkeypatch)
    recipe = load_recipe(ROOT / "plugins" / dist / recipe_file, SMALL + overrides)
    for kind, name in components:
        assert registry.get(kind, name).provider == dist
    res = train(recipe, tmp_path / "runs", quiet=True)
    assert res.summary["test_acc"] is not None
    if dist == "clfkit-example":
        assert (res.run_dir / "recipe.yaml").read_text().count("example_") >= 4


# --------------------------------------------------------------------------- a model that breaks when built or run
ODD_MODELS = """
    import math, pathlib
    import torch.nn as nn
    from clfkit.registry import register

    def head(in_chans, n):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_chans, n))

    @register("model", "acme_keyerror")
    def acme_keyerror(num_classes: int, in_chans: int):
        raise KeyError("depth")

    @register("model", "acme_exits")
    def acme_exits(num_classes: int, in_chans: int):
        raise SystemExit(3)

    @register("model", "acme_extra_class")
    def acme_extra_class(num_classes: int, in_chans: int):
        return head(in_chans, num_classes + 1)

    @register("model", "acme_squeezed")
    def acme_squeezed(num_classes: int, in_chans: int):
        return nn.Sequential(head(in_chans, 1), nn.Flatten(0))

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    @register("model", "acme_broken_forward")
    def acme_broken_forward(num_classes: int, in_chans: int):
        return Broken()

    @register("model", "acme_lazy")
    def acme_lazy(num_classes: int, in_chans: int):
        '''A LazyLinear head: its parameters take their shape on the first forward.'''
        return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.LazyLinear(num_classes))

    @register("model", "acme_odd_defaults")
    def acme_odd_defaults(num_classes: int, in_chans: int, root=pathlib.Path("/tmp"), fn=math.sqrt,
                          big=10**30, missing=float("nan"), scale=(1, 2)):
        '''Defaults a recipe cannot hold.'''
        return head(in_chans, num_classes)
"""


def _train_with_model(site, monkeypatch, tmp_path, model: str):
    from conftest import invoke, tiny_recipe

    site("acme-odd", ODD_MODELS)
    monkeypatch.setattr(registry, "REGISTRY", Registry())
    recipe = tmp_path / "r.yaml"
    data = tiny_recipe(train__epochs=1, data__image_size=8).to_dict()
    recipe.write_text(yaml.safe_dump({**data, "model": model}))
    return invoke("train", recipe, "--out", tmp_path / "runs")


@pytest.mark.parametrize(
    "model, words",
    [
        ("acme_keyerror", ["failed to build", "KeyError: 'depth'"]),
        ("acme_exits", ["failed to build", "SystemExit: 3"]),
        (
            "acme_extra_class",
            ["returned a torch.float32 tensor of shape (1, 5)", "(N, num_classes) = (1, 4)"],
        ),
        ("acme_squeezed", ["returned a torch.float32 tensor of shape (1,)", "(N, num_classes)"]),
        ("acme_broken_forward", ["failed on a batch of shape (1, 3, 8, 8)", "RuntimeError: mat1 and mat2"]),
    ],
)
def test_a_model_that_breaks_when_built_or_run_is_named_before_the_run_folder(
    site, monkeypatch, tmp_path, model, words
):
    """Was a traceback (any error but TypeError/ValueError; a wrong output shape from the loss,
    after the run folder was made), or exit 3 and no message from a plugin's sys.exit."""
    code, out = _train_with_model(site, monkeypatch, tmp_path, model)
    assert code == 2 and out.startswith("error: "), out
    assert f"model {model!r}" in out and "acme-odd" in out, out
    for w in words:
        assert w in out, out
    assert not (tmp_path / "runs").exists()


def test_a_model_with_lazy_layers_trains(site, monkeypatch, tmp_path):
    code, out = _train_with_model(site, monkeypatch, tmp_path, "acme_lazy")
    assert code == 0, out
    assert (tmp_path / "runs" / "tiny" / "best.pt").is_file()


def test_defaults_a_recipe_cannot_hold_stay_out_of_recipe_yaml(site, monkeypatch, tmp_path):
    """A function default made recipe.yaml unwritable (a traceback); 2**100 and nan were written,
    so recipe.yaml did not load again (too big) or ran with null instead of nan."""
    from conftest import invoke

    code, out = _train_with_model(site, monkeypatch, tmp_path, "acme_odd_defaults")
    assert code == 0, out
    saved = tmp_path / "runs" / "tiny" / "recipe.yaml"
    assert yaml.safe_load(saved.read_text())["model"] == {"name": "acme_odd_defaults", "scale": [1, 2]}
    code, out = invoke("train", saved, "--out", tmp_path / "runs")
    assert code == 0, out


@pytest.mark.parametrize(
    "name, words",
    [
        ("true", "would read it as True (bool)"),
        ("null", "would read it as None"),
        ("1e3", "as 1000.0 (float)"),
        ("[x]", "(list)"),
        ("a\nb", "control character"),
        ("net ", "ends with a space"),
        (7, "is a int, not text"),
    ],
)
def test_a_name_no_recipe_could_write_is_refused_at_registration(site, name, words):
    """'model: true' reads as a yes/no and 'model: 1e3' as a number: such a component was
    registered and listed, but no recipe could name it."""
    site(
        "acme-names",
        f"""
        import torch.nn as nn
        from clfkit.registry import register
        register("norm", {name!r})(lambda num_features, dim=2: nn.Identity())
    """,
    )
    reg = fresh()
    (error,) = errors_of(reg, "acme-names")
    assert "acme-names" in error and words in error, error


def test_names_a_recipe_can_write_are_taken(site):
    site(
        "acme-names-ok",
        """
        import torch.nn as nn
        from clfkit.registry import register
        for name in ("MyNorm", "my norm", "x.y", "üñí", "v2-1"):
            register("norm", name)(lambda num_features, dim=2: nn.Identity())
    """,
    )
    reg = fresh()
    assert errors_of(reg, "acme-names-ok") == []
    assert {"MyNorm", "my norm", "x.y", "üñí", "v2-1"} <= set(reg.names("norm"))
