"""What ONNX Runtime knows of ops: the kernels each execution provider registers, and each op's typing.

The kernel guard asks which ops of a model a provider has no kernel for; a pass that changes the
element type of a model (convert_precision) is handed `table`: for each op of the model, its schema's
typing (which inputs and outputs share a type parameter, what each allows) and whether the provider
has a kernel for it in that type at the model's opset.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys

import onnx_ir as ir
import onnxruntime as ort
import onnxruntime.capi._pybind_state as ort_state

from graphopt.passes.contract import Kernels, OpTyping
from graphopt.runtime.providers import EP_NAMES

ONNX_DOMAINS = ("", "ai.onnx")


@dataclasses.dataclass(frozen=True)
class Kernel:
    domain: str  # "" for ONNX's
    op: str
    provider: str
    versions: tuple[int, int]
    types: frozenset[str]  # every type any of its type constraints takes ("tensor(float16)" …)


@functools.cache
def all_kernels() -> tuple[Kernel, ...]:
    """Every kernel ONNX Runtime registers. A GPU build lists them in a child process:
    get_all_opkernel_def loads every provider library, and onnxruntime-gpu 1.31 crashes the process
    when TensorRT's libraries are absent (nothing can be checked then)."""
    if ort.get_available_providers() == ["CPUExecutionProvider"]:
        listed = [_entry(kernel) for kernel in ort_state.get_all_opkernel_def()]
    else:
        code = ("import json, onnxruntime.capi._pybind_state as s; print(json.dumps([[k.domain, k.op_name, "
                "k.provider, list(k.version_range), sorted({t for ts in k.type_constraints.values() for t in ts})] "
                "for k in s.get_all_opkernel_def()]))")
        completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if completed.returncode != 0:
            return ()
        listed = json.loads(completed.stdout.strip().splitlines()[-1])
    return tuple(Kernel(_domain(domain), op, provider, (versions[0], versions[1]), frozenset(types))
                 for domain, op, provider, versions, types in listed)


def _entry(kernel) -> list:
    return [kernel.domain, kernel.op_name, kernel.provider, list(kernel.version_range),
            sorted({type_ for types in kernel.type_constraints.values() for type_ in types})]


def _domain(domain: str) -> str:
    return "" if domain in ONNX_DOMAINS else domain


@functools.cache
def provider_ops(provider: str) -> frozenset[tuple[str, str]]:
    """(domain, op) of every kernel `provider` registers ("" for ONNX's domain)."""
    return frozenset((kernel.domain, kernel.op) for kernel in all_kernels() if kernel.provider == provider)


@functools.cache
def _schemas() -> dict[tuple[str, str], list]:
    """(domain, op) -> its schemas, oldest first: ONNX's and the contrib ops ONNX Runtime knows."""
    schemas: dict[tuple[str, str], list] = {}
    for schema in ort_state.get_all_operator_schema():
        schemas.setdefault((_domain(schema.domain), schema.name), []).append(schema)
    for listed in schemas.values():
        listed.sort(key=lambda schema: schema.since_version)
    return schemas


def typing(domain: str, op: str, opset: int) -> OpTyping | None:
    """The typing of `op`'s schema at `opset` (the newest at or below it), or None for an op
    ONNX Runtime has no schema of."""
    listed = [schema for schema in _schemas().get((_domain(domain), op), []) if schema.since_version <= opset]
    if not listed:
        return None
    schema = listed[-1]
    return OpTyping(tuple(parameter.typeStr for parameter in schema.inputs),
                    tuple(parameter.typeStr for parameter in schema.outputs),
                    {constraint.type_param_str: frozenset(constraint.allowed_type_strs)
                     for constraint in schema.type_constraints},
                    bool(schema.inputs) and schema.inputs[-1].option.name == "Variadic",
                    bool(schema.outputs) and schema.outputs[-1].option.name == "Variadic")


def table(model: ir.Model, ep: str, type_str: str) -> Kernels:
    """For each op of `model` (its subgraphs' included): its typing, and whether `ep` has a kernel
    for it that takes `type_str` at the model's opset for its domain."""
    provider = EP_NAMES.get(ep, ep)
    opsets = {_domain(domain): version for domain, version in model.opset_imports.items()}
    ops = {(_domain(node.domain), node.op_type) for graph in model.graphs() for node in graph}
    typings, typed = {}, set()
    for domain, op in ops:
        opset = opsets.get(domain, 1)
        found = typing(domain, op, opset)
        if found is not None:
            typings[(domain, op)] = found
        if any(kernel.provider == provider and kernel.domain == domain and kernel.op == op
               and kernel.versions[0] <= opset <= kernel.versions[1] and type_str in kernel.types
               for kernel in all_kernels()):
            typed.add((domain, op))
    return Kernels(ep, typings, frozenset(typed), bool(provider_ops(provider)))
