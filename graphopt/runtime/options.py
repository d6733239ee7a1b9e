"""How models are run for validation and benchmarks: the runtime flags as one object."""

from __future__ import annotations

import dataclasses

from graphopt.runtime.providers import SessionConfig


@dataclasses.dataclass
class RuntimeOptions:
    """How models are run for validation and benchmarks (mirrors the CLI's runtime flags).

    `opt_level` None is each use's default: validation compares the graphs as written
    ("disable": ONNX Runtime's own rewrites could hide a change), benchmarks time what a
    deployment runs ("all"). `session_config` is any ONNX Runtime session config entry.
    """

    ep: str = "cpu"
    device_id: int = 0
    threads: int | None = None
    opt_level: str | None = None
    provider_options: dict[str, str] = dataclasses.field(default_factory=dict)
    inter_op: int | None = None
    execution_mode: str = "sequential"
    spinning: bool = True
    session_config: dict[str, str] = dataclasses.field(default_factory=dict)

    def for_validation(self) -> SessionConfig:
        """On CUDA, TF32 off unless asked for: validation compares the graphs' float32 math, and
        TF32 products (ONNX Runtime's default) differ by ~1e-4 between any two graphs."""
        config = self._config("disable")
        if config.resolved_ep() == "cuda" and "use_tf32" not in self.provider_options:
            config = dataclasses.replace(config, provider_options=(*config.provider_options, ("use_tf32", "0")))
        return config

    def for_bench(self) -> SessionConfig:
        return self._config("all")

    def _config(self, default_opt_level: str) -> SessionConfig:
        return SessionConfig(self.ep, self.device_id, self.threads, self.opt_level or default_opt_level,
                             tuple(self.provider_options.items()), self.inter_op, self.execution_mode,
                             self.spinning, tuple(self.session_config.items()))
