"""pytest configuration: quiet library loggers, the --full flag for the long budgets."""

from __future__ import annotations

import logging

import pytest

logging.getLogger("onnxscript").setLevel(logging.CRITICAL)
logging.getLogger("onnx_ir").setLevel(logging.CRITICAL)


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="run the full corpus and fuzzing budgets")


@pytest.fixture
def full(request) -> bool:
    return request.config.getoption("--full")


