"""An ONNX model made trainable in PyTorch: a torch.nn.Module that runs the graph node by node with
torch ops (graphopt.train.ops), its float initializers as parameters.

The graph stays what it is — fused, pruned, factored, clustered — and training changes only the
values of its weights: `write` puts the trained values back into the same graph, so the student file
keeps every rewrite graphopt made and needs no re-export. A clustered model trains its shared values
(the codebook), never the indices, so it stays clustered. Frozen: integer tensors, single values
(epsilons, scales), BatchNormalization's running statistics (a fine-tuned inference graph keeps them),
Resize's scales.
Weights that an exporter wrote as Constant nodes (paddle2onnx) become initializers first.

`check_convertible` names every operator that cannot be made trainable before anything runs; the
round trip (`round_trip`) compares the module with ONNX Runtime on the same inputs before training.
Imports torch: import this module only where training happens.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common
import torch

from graphopt.errors import InputError
from graphopt.train.ops import OPS, Node, Unsupported, load_all

# BatchNormalization's running mean and variance; Resize's roi and scales (read as numbers, never learned)
_FROZEN_INPUTS = {("", "BatchNormalization"): (3, 4), ("", "Resize"): (1, 2)}
_FLOATS = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
_BRANCHES = {"If": ("then_branch", "else_branch")}


@dataclasses.dataclass
class _Step:
    function: Callable | None  # None: an If, run by the graph itself
    node: Node
    inputs: list[ir.Value | None]
    outputs: list[ir.Value]
    branches: tuple = ()  # If: (then plan, else plan), each (steps, outputs)


def unsupported_ops(model: ir.Model) -> dict[str, list[str]]:
    """{op ('domain:' prefixed outside the default domain): names of its nodes} for every node, in every
    graph and subgraph, that the trainable graph cannot compute."""
    load_all()
    missing: dict[str, list[str]] = collections.defaultdict(list)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if (domain, node.op_type) not in OPS and not (domain == "" and node.op_type in _BRANCHES):
            missing[f"{domain + ':' if domain else ''}{node.op_type}"].append(node.name or "(unnamed)")
    return dict(missing)


def check_convertible(model: ir.Model, what: str = "the student") -> None:
    missing = unsupported_ops(model)
    if missing:
        listed = "; ".join(f"{op} ({len(names)} node(s), e.g. {names[0]!r})" for op, names in sorted(missing.items()))
        hint = " (quantized: distill the float model, then quantize it)" if any(
            "Quant" in op or "Integer" in op or "NBits" in op for op in missing) else ""
        raise Unsupported(f"{what} has operators that cannot be made trainable: {listed}{hint}")


class TrainableGraph(torch.nn.Module):
    """The graph as a module: forward takes its inputs in `input_names`' order (default: the graph's)
    and returns its outputs, a tuple when there are several."""

    def __init__(self, model: ir.Model, input_names: list[str] | None = None) -> None:
        check_convertible(model)
        super().__init__()
        ir.passes.common.LiftConstantsToInitializersPass(size_limit=2)(model)  # weights held in Constant nodes
        self.model = model
        graph = model.graph
        self.opsets = {("" if domain == "ai.onnx" else domain): version
                       for domain, version in model.opset_imports.items()}
        real = [value for value in graph.inputs if value.name not in graph.initializers]
        names = [value.name for value in real]
        if input_names is not None and sorted(input_names) != sorted(names):
            raise InputError(f"the student's inputs {names} are not the teacher's {list(input_names)}")
        by_name = {value.name: value for value in real}
        self.inputs = [by_name[name] for name in (input_names or names)]
        frozen = _frozen_values(graph)
        self.trained: list[ir.Value] = []
        self.constants: dict[ir.Value, torch.Tensor] = {}
        parameters = []
        for value in _initializers(model):
            array = value.const_value.numpy()
            if value.dtype in _FLOATS and array.size > 1 and value not in frozen:
                self.trained.append(value)
                parameters.append(torch.nn.Parameter(torch.from_numpy(np.array(array))))
            else:
                self.constants[value] = torch.from_numpy(np.array(array))
        self.weights = torch.nn.ParameterList(parameters)
        self.plan = self._compile(graph)
        self.outputs = list(graph.outputs)

    def values(self, names: list[str]) -> list[ir.Value]:
        """The graph's values called `names` (a module may return inner values after its outputs: `write` keeps
        the graph's own outputs)."""
        found = {value.name: value for node in self.model.graph for value in node.outputs}
        return [found[name] for name in names]

    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.weights)

    def forward(self, *inputs):
        if len(inputs) != len(self.inputs):
            raise InputError(f"the student takes {len(self.inputs)} input(s), got {len(inputs)}")
        env = dict(self.constants)
        env.update(zip(self.trained, self.weights))
        env.update(zip(self.inputs, inputs))
        self._run(self.plan, env)
        results = tuple(env[value] for value in self.outputs)
        return results[0] if len(results) == 1 else results

    def write(self, path: str | os.PathLike) -> None:
        """The graph with the trained weights in place of the initial ones, saved to `path`."""
        from graphopt import model as model_io

        for value, weight in zip(self.trained, self.weights):
            value.const_value = ir.tensor(weight.detach().cpu().numpy().copy(), name=value.name)
        model_io.save(self.model, path)

    def _compile(self, graph: ir.Graph) -> list[_Step]:
        steps = []
        for node in graph:
            domain = "" if node.domain == "ai.onnx" else node.domain
            attributes = {key: _python(attribute) for key, attribute in node.attributes.items()
                          if key not in _BRANCHES.get(node.op_type, ())}
            spec = Node(node.op_type, node.name or node.op_type, attributes, self.opsets.get(domain, 1),
                        len(node.outputs))
            branches = ()
            if domain == "" and node.op_type in _BRANCHES:
                branches = tuple((self._compile(node.attributes[key].value), list(node.attributes[key].value.outputs))
                                 for key in _BRANCHES[node.op_type])
            steps.append(_Step(None if branches else OPS[(domain, node.op_type)], spec, list(node.inputs),
                               list(node.outputs), branches))
        return steps

    def _run(self, steps: list[_Step], env: dict) -> None:
        for step in steps:
            arguments = [None if value is None else env[value] for value in step.inputs]
            if step.branches:  # If: the branch's nodes read the enclosing graphs' values
                plan, outputs = step.branches[0 if bool(arguments[0]) else 1]
                scope = collections.ChainMap({}, env)
                self._run(plan, scope)
                results = tuple(scope[value] for value in outputs)
            else:
                try:
                    results = step.function(step.node, *arguments)
                except Unsupported:
                    raise
                except Exception as error:  # noqa: BLE001  (named with its node, not a torch traceback)
                    raise Unsupported(f"node {step.node.name!r} ({step.node.op_type}) failed in torch: "
                                      f"{type(error).__name__}: {error}") from error
            if not isinstance(results, tuple):
                results = (results,)
            for value, result in zip(step.outputs, results):
                env[value] = result


def _initializers(model: ir.Model) -> list[ir.Value]:
    return [value for graph in model.graphs() for value in graph.initializers.values()
            if value.const_value is not None]


def _frozen_values(graph: ir.Graph) -> set[ir.Value]:
    frozen = set()
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for index in _FROZEN_INPUTS.get((node.domain, node.op_type), ()):
            if index < len(node.inputs) and node.inputs[index] is not None:
                frozen.add(node.inputs[index])
    return frozen


def _python(attribute: ir.Attr):
    """An attribute's value as the op functions read it: numbers, strings, lists, tensors as numpy."""
    value = attribute.value
    if attribute.type == ir.AttributeType.TENSOR:
        return value.numpy()
    if attribute.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        raise Unsupported(f"a subgraph attribute {attribute.name!r} outside If")
    return list(value) if isinstance(value, tuple) else value


def _round_trip_tolerance():
    """graphopt's fp32 tolerance, and an element within 1e-5 of its output's largest magnitude: torch and
    ONNX Runtime sum in different orders, which moves any element by a share of the output's scale
    (PicoDet's box regressions: 1 of 243,200 elements, near 0, off by 1.1e-5 on outputs up to 6.9)."""
    from graphopt.runtime.compare import TOLERANCES

    return dataclasses.replace(TOLERANCES["fp32"], scale=1e-5)


def round_trip(module, model, feeds: dict[str, np.ndarray]) -> float:
    """The module against ONNX Runtime running `model` (a path or a model) on `feeds`, at graphopt's fp32
    tolerance: the largest abs error; raises InputError naming the first output that differs."""
    from graphopt.runtime.compare import compare
    from graphopt.runtime.providers import SessionConfig, create_session

    session = create_session(model, SessionConfig(spinning=False, opt_level="disable"))
    wanted = session.run(feeds)
    module.eval()
    with torch.no_grad():
        got = module(*(torch.from_numpy(np.ascontiguousarray(feeds[value.name])) for value in module.inputs))
    got = got if isinstance(got, tuple) else (got,)
    worst = 0.0
    for value, expected, actual in zip(module.outputs, wanted, got):
        result = compare(value.name, expected, actual.numpy(), _round_trip_tolerance())
        if not result.passed:
            raise InputError(f"the student made trainable does not compute what ONNX Runtime does on output "
                             f"{value.name!r}: {result.reason} (max abs error {result.max_abs_error:.3g})")
        worst = max(worst, result.max_abs_error)
    return worst
