"""graphopt: ONNX graph optimization that proves the optimized model computes the same thing.

    import graphopt
    result = graphopt.optimize("model.onnx", "model.opt.onnx", preset="O1")
    print(result.report.to_json())
"""

from graphopt.api import OptimizeResult, PassInfo, list_passes, optimize
from graphopt.errors import GraphoptError, InputError, ValidationFailed
from graphopt.model import ModelInfo, convert_opset, inspect, load, save
from graphopt.pipeline import PRESETS, PassManager, PassReport, PipelineReport
from graphopt.passes import Pass, create_pass, register

__version__ = "0.1.0"

__all__ = [
    "GraphoptError",
    "InputError",
    "ModelInfo",
    "OptimizeResult",
    "PRESETS",
    "Pass",
    "PassInfo",
    "PassManager",
    "PassReport",
    "PipelineReport",
    "ValidationFailed",
    "convert_opset",
    "create_pass",
    "inspect",
    "list_passes",
    "load",
    "optimize",
    "register",
    "save",
]
