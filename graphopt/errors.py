"""The errors graphopt raises on purpose, each carrying the exit code the CLI returns.

`InputError` (exit 2) is anything wrong with what the user gave us; `ValidationFailed`,
`GuardRefused` and `PassError` (exit 1) mean graphopt refuses to hand back a model because it does
not hold up.
"""

from __future__ import annotations


class GraphoptError(Exception):
    """Base of the errors that end a command with one clear line instead of a traceback."""

    exit_code = 2


class InputError(GraphoptError):
    """Bad input or usage: unreadable model, unknown pass, bad recipe, missing file."""

    exit_code = 2


class ValidationFailed(GraphoptError):
    """The optimized model does not compute the same thing; `result` holds the comparison."""

    exit_code = 1

    def __init__(self, message: str, result=None) -> None:
        super().__init__(message)
        self.result = result


class PassError(GraphoptError):
    """A pass raised or left the model broken; nothing is written."""

    exit_code = 1


class ExportFailed(GraphoptError):
    """No exporter could turn the module into ONNX (an unsupported op, a failing trace)."""

    exit_code = 2


class GuardRefused(GraphoptError):
    """A lossy result is slower (or no smaller) than the float model, or uses ops its execution
    provider lacks."""

    exit_code = 1


class NothingChanged(GuardRefused):
    """A lossy run changed no layer (none it handles, or every one held back): a result that is the
    float model is not handed back as quantized, pruned …"""
