"""graphopt's passes, one module per family; importing this package registers them all."""

from graphopt.passes import compress, cleanup, deployment, fold, fusion, noops, precision, quantize, simplify  # noqa: F401
# (importing them registers them)
from graphopt.passes.registry import (
    TARGETS,
    LossyPass,
    Pass,
    PassOption,
    create_pass,
    pass_class,
    pass_names,
    pass_options,
    register,
)

__all__ = [
    "TARGETS",
    "LossyPass",
    "Pass",
    "PassOption",
    "create_pass",
    "pass_class",
    "pass_names",
    "pass_options",
    "register",
]
