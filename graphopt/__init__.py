"""graphopt: ONNX graph optimization that proves the optimized model computes the same thing.

    import graphopt
    result = graphopt.optimize("model.onnx", "model.opt.onnx", preset="O1", validate=True)
    print(result.report.to_json(), result.validation.summary())
"""

from graphopt.api import (
    OptimizeResult,
    PassInfo,
    RuntimeOptions,
    bench,
    compress,
    distill,
    list_passes,
    optimize,
    quantize,
    validate,
)
from graphopt.errors import ExportFailed, GraphoptError, GuardRefused, InputError, NothingChanged, PassError, ValidationFailed
from graphopt.lossy import Budget, LossyResult
from graphopt.model import ModelInfo, convert_opset, inspect, load, save
from graphopt.passes import LossyPass, Pass, create_pass, register
from graphopt.compression import CompressSettings
from graphopt.quantization import QuantizeSettings
from graphopt.pipeline import PRESETS, PassManager, PassReport, PipelineReport
from graphopt.runtime.bench import BenchResult
from graphopt.runtime.validate import ValidationResult

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "BenchResult",
    "Budget",
    "CompressSettings",
    "ExportFailed",
    "GraphoptError",
    "GuardRefused",
    "NothingChanged",
    "InputError",
    "LossyPass",
    "LossyResult",
    "ModelInfo",
    "OptimizeResult",
    "Pass",
    "PassInfo",
    "PassError",
    "PassManager",
    "PassReport",
    "PipelineReport",
    "QuantizeSettings",
    "RuntimeOptions",
    "ValidationFailed",
    "ValidationResult",
    "bench",
    "compress",
    "convert_opset",
    "distill",
    "create_pass",
    "inspect",
    "list_passes",
    "load",
    "optimize",
    "quantize",
    "register",
    "save",
    "validate",
]
