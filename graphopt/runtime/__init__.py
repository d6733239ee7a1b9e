"""Everything that talks to ONNX Runtime: sessions and providers, inputs, validation, benchmarks."""

from graphopt.runtime.compare import TOLERANCES, OutputComparison, Tolerance, tolerance
from graphopt.runtime.providers import EP_CHOICES, Session, SessionConfig, create_session
from graphopt.runtime.validate import Divergence, ValidationResult, Validator, validate

__all__ = [
    "EP_CHOICES",
    "TOLERANCES",
    "Divergence",
    "OutputComparison",
    "Session",
    "SessionConfig",
    "Tolerance",
    "ValidationResult",
    "Validator",
    "create_session",
    "tolerance",
    "validate",
]
