"""What ran a benchmark: machine, software and session settings, so a figure can be reproduced.

Every bench result carries this record (JSON and Markdown); baselines compare it with the
current run and say when the two were taken on different machines or settings.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from importlib import metadata
from typing import Any

from graphopt.runtime.providers import SessionConfig, ort_version

# Fields that make two runs' latencies incomparable when they differ.
COMPARABLE_FIELDS = ("cpu_model", "logical_cpus", "usable_cpus", "gpu", "onnxruntime_version", "ep",
                     "threads", "inter_op_threads", "execution_mode", "spinning", "graph_optimization_level",
                     "session_config", "provider_options", "concurrency")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int | None:
    """Distinct (package, core) pairs in /proc/cpuinfo; None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as stream:
            text = stream.read()
    except OSError:
        return None
    cores, package = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            package = value.strip()
        elif key.strip() == "core id":
            cores.add((package, value.strip()))
    return len(cores) or None


def gpu_name(device_id: int) -> str | None:
    """The GPU's name from nvidia-smi, when there is one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        completed = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader",
                                    f"--id={device_id}"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() or None


def graphopt_version() -> str:
    try:
        return metadata.version("graphopt")
    except metadata.PackageNotFoundError:
        return "unknown"


def describe(config: SessionConfig, ep: str) -> dict[str, Any]:
    """The machine, software and session settings of a run on `ep`."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "graphopt_version": graphopt_version(),
        "onnxruntime_version": ort_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "usable_cpus": usable,
        "gpu": gpu_name(config.device_id) if ep != "cpu" else None,
        **config.describe(),
        "ep": ep,
        "threads_note": None if config.threads else "ONNX Runtime default (one per physical core)",
    }
