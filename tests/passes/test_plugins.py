"""Plugins: a .py file, a module or an installed entry point registers passes the CLI can run."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest

from graphopt.cli import main
from graphopt.errors import InputError
from graphopt.passes import create_pass, pass_names, plugins
from graphopt.passes.registry import unregister
from tests.helpers import assert_same, parse, run

PLUGIN = '''"""Test plugin: a pass that removes Identity nodes."""

import onnx_ir as ir

import graphopt


@graphopt.register("test_drop_identity")
class DropIdentity(graphopt.Pass):
    """Test pass: removes Identity nodes, their users read the Identity's input instead."""

    def call(self, model):
        identities = [node for node in model.graph if node.op_type == "Identity"]
        for node in identities:
            if node.outputs[0].is_graph_output():
                self.skip("Identity output is a graph output")
                continue
            node.outputs[0].replace_all_uses_with(node.inputs[0])
            model.graph.remove(node, safe=True)
        return ir.passes.PassResult(model, modified=bool(identities))
'''

MODEL_TEXT = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x) => (float[N,4] y) <float[4] w = {1, 2, 3, 4}> {
        a = Identity(x)
        b = Mul(a, w)
        y = Relu(b) }"""


@pytest.fixture(autouse=True)
def _forget_plugins():
    """The registry is global: forget the passes and plugin modules each test added."""
    names, modules = set(pass_names()), set(sys.modules)
    yield
    for name in set(pass_names()) - names:
        unregister(name)
    for module in set(sys.modules) - modules:
        if module.startswith(("graphopt_plugin_", "test_plugin_")):
            del sys.modules[module]


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "my_passes.py"
    path.write_text(PLUGIN)
    return path


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(parse(MODEL_TEXT), path)
    return path


def _assert_identity_removed(model_path, out) -> None:
    optimized = onnx.load(out)
    assert [node.op_type for node in optimized.graph.node] == ["Mul", "Relu"]
    feeds = {"x": np.arange(12, dtype=np.float32).reshape(3, 4) - 6}
    assert_same(run(onnx.load(model_path), feeds), run(optimized, feeds))


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("graphopt: error: ")
    return lines[0]


def test_file_plugin_is_listed_and_runs(plugin_file, model_path, tmp_path, capsys):
    assert main(["--plugin", str(plugin_file), "passes"]) == 0
    assert "test_drop_identity" in capsys.readouterr().out
    out = tmp_path / "out.onnx"
    assert main(["--plugin", str(plugin_file), "optimize", str(model_path), "-o", str(out),
                 "--passes", "test_drop_identity", "-q"]) == 0
    _assert_identity_removed(model_path, out)


def test_file_plugin_in_a_recipe(plugin_file, model_path, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('passes = ["test_drop_identity", "remove_unused"]\n')
    out = tmp_path / "out.onnx"
    assert main(["--plugin", str(plugin_file), "optimize", str(model_path), "-o", str(out),
                 "--recipe", str(recipe), "-q"]) == 0
    _assert_identity_removed(model_path, out)


def test_module_plugin(model_path, tmp_path, monkeypatch):
    (tmp_path / "test_plugin_module.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out.onnx"
    assert main(["--plugin", "test_plugin_module", "optimize", str(model_path), "-o", str(out),
                 "--passes", "test_drop_identity", "-q"]) == 0
    _assert_identity_removed(model_path, out)


def test_without_the_plugin_its_pass_is_unknown(model_path, tmp_path, capsys):
    assert main(["optimize", str(model_path), "-o", str(tmp_path / "out.onnx"),
                 "--passes", "test_drop_identity"]) == 2
    assert "unknown pass 'test_drop_identity'" in _one_error_line(capsys)
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("source, cause", [
    ("x = (\n", "SyntaxError: "),
    ('raise RuntimeError("no GPU here\\nsecond line")\n', "RuntimeError: no GPU here"),
    ("import graphopt_no_such_dependency\n", "No module named 'graphopt_no_such_dependency'"),
    (PLUGIN.replace("test_drop_identity", "remove_unused"),
     "ValueError: pass 'remove_unused' registered twice"),
])
def test_broken_file_plugin_is_one_line_and_exit_2(tmp_path, capsys, source, cause):
    path = tmp_path / "broken.py"
    path.write_text(source)
    assert main(["--plugin", str(path), "passes"]) == 2
    line = _one_error_line(capsys)
    assert f"cannot load plugin {path}: " in line and cause in line
    assert not line.endswith("second line")


@pytest.mark.parametrize("spec, cause", [
    ("./graphopt_no_such_plugin.py", "no such .py file"),
    ("graphopt_no_such_plugin", "ModuleNotFoundError: No module named 'graphopt_no_such_plugin'"),
])
def test_missing_plugin_is_one_line_and_exit_2(capsys, spec, cause):
    assert main(["--plugin", spec, "passes"]) == 2
    assert f"cannot load plugin {spec}: {cause}" in _one_error_line(capsys)


def test_plugin_failing_half_way_leaves_no_passes(tmp_path):
    path = tmp_path / "half.py"
    path.write_text(PLUGIN + 'raise RuntimeError("after registering")\n')
    with pytest.raises(InputError, match="RuntimeError: after registering"):
        plugins.load_plugin(str(path))
    assert "test_drop_identity" not in pass_names()
    path.write_text(PLUGIN)
    plugins.load_plugin(str(path))
    assert "test_drop_identity" in pass_names()


def _install(tmp_path, monkeypatch, entry_points: str) -> None:
    """A fake installed distribution on sys.path, and a registry that has not read it yet."""
    dist_info = tmp_path / "test_plugin_dist-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: test-plugin-dist\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[graphopt.passes]\n{entry_points}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_installed_loaded", False)
    monkeypatch.setattr(plugins, "_installed_failures", [])


def test_entry_point_plugin_loads_before_the_registry_is_read(model_path, tmp_path, monkeypatch):
    (tmp_path / "test_plugin_installed.py").write_text(PLUGIN)
    _install(tmp_path, monkeypatch, "mine = test_plugin_installed")
    assert "test_drop_identity" in pass_names()
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(model_path), "-o", str(out), "--passes", "test_drop_identity", "-q"]) == 0
    _assert_identity_removed(model_path, out)


def test_broken_entry_point_is_named_only_when_a_pass_is_missing(model_path, tmp_path, monkeypatch,
                                                                   capsys):
    _install(tmp_path, monkeypatch, "broken = test_plugin_not_installed")
    assert main(["passes"]) == 0
    assert main(["optimize", str(model_path), "-o", str(tmp_path / "a.onnx"), "--passes",
                 "remove_unused", "-q"]) == 0
    capsys.readouterr()
    assert main(["optimize", str(model_path), "-o", str(tmp_path / "b.onnx"), "--passes",
                 "test_drop_identity"]) == 2
    line = _one_error_line(capsys)
    assert ("unknown pass 'test_drop_identity'" in line
            and "plugin test-plugin-dist 1.0 (entry point broken = test_plugin_not_installed) "
                "failed to load: ModuleNotFoundError" in line)
    with pytest.raises(InputError, match="test-plugin-dist"):
        create_pass("test_drop_identity")
