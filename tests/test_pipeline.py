"""The pass manager: registry, presets, pass lists, recipes, fixed point, invariants, reports."""

from __future__ import annotations

import json

import onnx_ir as ir
import pytest

import graphopt
from graphopt.errors import InputError, NothingChanged, PassError
from graphopt.passes import Pass, create_pass, pass_names, register
from graphopt.passes.registry import unregister
from graphopt.pipeline import FLOAT_PRESETS, PRESETS, PassManager, passes_spec, recipe_spec
from tests.helpers import op_types, optimize_and_compare, parse, random_feeds

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
MODEL = HEADER + """
    g (float[2,3] x) => (float[6] y) {
        a = Identity(x)
        c = Constant<value=float {0.0}>()
        b = Add(a, c)
        s = Shape(b)
        n = ReduceProd<keepdims=1>(s)
        y = Reshape(b, n)
        dead = Neg(x) }"""


def test_every_preset_preserves_outputs():
    model = parse(MODEL)
    feeds = random_feeds(model)
    for preset in PRESETS:
        calibration = {"calibration": [feeds, random_feeds(model, seed=1)]} if preset == "int8-static" else {}
        lossy = preset not in FLOAT_PRESETS
        if lossy:  # a model with nothing to quantize is refused with the reason; --force writes it as it is
            with pytest.raises(NothingChanged, match="nothing was (quantized|converted)"):
                graphopt.optimize(model, preset=preset, **calibration)
        result = optimize_and_compare(model, feeds, preset=preset, force=lossy, **calibration)  # exact
        if preset != "O0":
            assert op_types(result.model) == ["Reshape"]


def test_report_records_each_pass():
    result = optimize_and_compare(parse(MODEL), preset="O1")
    report = result.report
    assert report.converged
    first = report.passes[0]
    assert first.name == "remove_unused" and first.nodes_before == 7
    assert report.nodes_after == 1
    data = json.loads(report.to_json())
    assert {"name", "iteration", "nodes_before", "nodes_after", "initializers_before",
            "initializers_after", "parameter_bytes_before", "parameter_bytes_after",
            "seconds", "modified", "skipped"} <= set(data["passes"][0])


def test_fixed_point_reruns_only_after_changes():
    result = optimize_and_compare(parse(MODEL), preset="O1")
    names_last_round = [p.name for p in result.report.passes if p.iteration == result.report.iterations]
    assert len(names_last_round) < len(PRESETS["O1"])
    assert not any(p.modified for p in result.report.passes if p.iteration == result.report.iterations)


def test_pass_list_runs_in_order_once():
    result = optimize_and_compare(parse(MODEL), passes="eliminate_noops,remove_unused")
    assert [p.name for p in result.report.passes] == ["eliminate_noops", "remove_unused"]


def test_unknown_pass_name_suggests_the_closest():
    with pytest.raises(InputError, match="did you mean 'remove_unused'"):
        graphopt.optimize(parse(MODEL), passes="remove_unsued")


@pytest.fixture
def options_pass():
    """A registered pass with one option of each type text can give; forgotten afterwards."""

    @register("test_options")
    class _Options(Pass):
        """Test pass: records its options."""

        def __init__(self, count: int = 1, scale: float = 1.0, enabled: bool = True,
                     label: str = "") -> None:
            super().__init__()
            self.settings = (count, scale, enabled, label)

        def call(self, model):
            return ir.passes.PassResult(model, modified=False)

    yield
    unregister("test_options")


def test_pass_list_options_are_converted_to_their_types(options_pass):
    spec = passes_spec("fold_constants:max_output_bytes=2048:infer_shapes=false, remove_unused")
    assert spec.passes == [("fold_constants", {"max_output_bytes": 2048, "infer_shapes": False}),
                           ("remove_unused", {})]
    spec = passes_spec(["test_options:count=3:scale=0.5:enabled=no:label=a b", "remove_unused"])
    assert spec.build()[0].settings == (3, 0.5, False, "a b")


@pytest.mark.parametrize("text, value", [
    ("true", True), ("TRUE", True), ("yes", True), ("1", True),
    ("false", False), ("No", False), ("0", False),
])
def test_pass_list_bool_options(options_pass, text, value):
    assert passes_spec(f"test_options:enabled={text}").passes == [("test_options", {"enabled": value})]


def test_pass_list_options_change_what_runs():
    model = parse(MODEL)
    folded = optimize_and_compare(model, passes="fold_constants,remove_unused")
    unfolded = optimize_and_compare(model, passes="fold_constants:infer_shapes=false,remove_unused")
    assert "Shape" not in op_types(folded.model) and "Shape" in op_types(unfolded.model)


@pytest.mark.parametrize("passes, message", [
    ("fold_constants:max_output_bytes=big",
     "option fold_constants.max_output_bytes must be an integer, got 'big'"),
    ("fold_constants:infer_shapes=maybe", "option fold_constants.infer_shapes must be true or false"),
    ("test_options:scale=wide", "option test_options.scale must be a number, got 'wide'"),
    ("fold_constants:max_output=1", "pass 'fold_constants' has no option 'max_output' \\(options: "),
    ("fold_constants:max_output_bytes", "'max_output_bytes' in .* is not key=value"),
    ("fold_constants:infer_shapes=1:infer_shapes=0", "option 'infer_shapes' is given twice"),
    ("fold_constant:infer_shapes=1", "unknown pass 'fold_constant'; did you mean 'fold_constants'"),
])
def test_bad_pass_list_options_are_input_errors(options_pass, passes, message):
    with pytest.raises(InputError, match=message):
        graphopt.optimize(parse(MODEL), passes=passes)


def test_only_one_of_preset_passes_recipe():
    with pytest.raises(InputError, match="only one of"):
        graphopt.optimize(parse(MODEL), preset="O1", passes="remove_unused")


@pytest.mark.parametrize("suffix, text", [
    (".toml", 'fixed_point = true\npasses = ["eliminate_noops", {name = "fold_constants", '
              'max_growth_bytes = 1024}, "remove_unused"]\n'),
    (".yaml", "fixed_point: true\npasses:\n  - eliminate_noops\n  - fold_constants: "
              "{max_growth_bytes: 1024}\n  - remove_unused\n"),
])
def test_recipe_files(tmp_path, suffix, text):
    path = tmp_path / f"recipe{suffix}"
    path.write_text(text)
    spec = recipe_spec(path)
    assert [name for name, _ in spec.passes] == ["eliminate_noops", "fold_constants", "remove_unused"]
    assert spec.passes[1][1] == {"max_growth_bytes": 1024}
    result = optimize_and_compare(parse(MODEL), recipe=path)
    assert result.report.converged


@pytest.mark.parametrize("text, message", [
    ("passes = [", "not valid TOML"),
    ("passes = []", "non-empty"),
    ('passes = ["nope"]', "unknown pass"),
    ('passes = [{name = "fold_constants", max_growth = 1}]', "has no option 'max_growth'"),
    ('passes = [{name = "fold_constants", max_growth_bytes = "big"}]', "must be an integer"),
    ('passes = ["remove_unused"]\ncolour = "blue"', "unknown key 'colour'"),
    ('passes = ["remove_unused"]\nmax_iterations = 0', "positive integer"),
])
def test_bad_recipes_are_input_errors(tmp_path, text, message):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        recipe_spec(path)


def test_recipe_with_unknown_suffix(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text("{}")
    with pytest.raises(InputError, match="must end in"):
        recipe_spec(path)


def test_registry_has_the_cleanup_passes_with_summaries():
    for name in PRESETS["O1"]:
        assert name in pass_names()
    for name in pass_names():
        cls = type(create_pass(name))
        assert cls.summary and "\n" not in cls.summary


class _BreaksOrder(Pass):
    """Test pass: reverses the node order (so the graph is no longer sorted)."""

    def call(self, model):
        nodes = list(model.graph)
        for node in nodes:
            model.graph.remove(node)
        model.graph.extend(reversed(nodes))
        return ir.passes.PassResult(model, modified=True)


class _Raises(Pass):
    """Test pass: fails."""

    def call(self, model):
        raise RuntimeError("boom")


def test_invariant_check_names_the_pass_that_broke_the_model():
    _BreaksOrder.name = "breaks_order"
    model = ir.serde.deserialize_model(parse(HEADER + """
        g (float[2] x) => (float[2] y) { a = Relu(x)
            y = Neg(a) }"""))
    with pytest.raises(PassError, match="pass breaks_order broke the model: .*topologically"):
        PassManager([_BreaksOrder()]).run(model)


def test_pass_exception_becomes_pass_error():
    _Raises.name = "raises"
    model = ir.serde.deserialize_model(parse(MODEL))
    with pytest.raises(PassError, match="pass raises failed: RuntimeError: boom"):
        PassManager([_Raises()]).run(model)


@register("test_needs_opset_99", min_opset=99)
class _NeedsOpset99(Pass):
    """Test pass with a high opset floor."""

    def call(self, model):
        raise AssertionError("must not run")


def test_pass_outside_its_opset_window_is_skipped_with_reason():
    result = graphopt.optimize(parse(MODEL), passes="test_needs_opset_99")
    entry = result.report.passes[0]
    assert not entry.ran and "needs opset >= 99" in entry.skipped[0]


def test_target_must_be_known():
    with pytest.raises(InputError, match="unknown target"):
        graphopt.optimize(parse(MODEL), target="tensorrt")


def test_opset_conversion_before_passes():
    model = parse(MODEL.replace('"" : 17', '"" : 13'))
    result = optimize_and_compare(model, opset=17)
    assert result.model.opset_imports[""] == 17


class _CountsRuns(Pass):
    """Test pass: records which run this is, and changes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def call(self, model):
        self.runs += 1
        self.changed(f"run {self.runs}")
        return ir.passes.PassResult(model, modified=False)


def test_report_carries_the_changes_of_each_run_only():
    _CountsRuns.name = "counts_runs"
    counts_runs = _CountsRuns()
    model = ir.serde.deserialize_model(parse(MODEL))
    report = PassManager([counts_runs, counts_runs]).run(model)
    assert [entry.changes for entry in report.passes] == [["run 1"], ["run 2"]]
    assert json.loads(report.to_json())["passes"][0]["changes"] == ["run 1"]


def test_folds_that_modified_the_model_say_what_they_changed():
    result = optimize_and_compare(parse(MODEL), preset="O1")
    folds = [entry for entry in result.report.passes if entry.name == "fold_constants" and entry.modified]
    assert folds and all(entry.changes for entry in folds)
