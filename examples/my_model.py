"""An example --module factory: `graphopt run --module examples/my_model.py:build --out DIR`."""

import torch


class TinyClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(20, 64), torch.nn.LayerNorm(64), torch.nn.GELU(), torch.nn.Linear(64, 5)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


def build():
    """No arguments; returns the module, example inputs and (optionally) names and dynamic axes."""
    torch.manual_seed(0)
    return {
        "module": TinyClassifier().eval(),
        "example_inputs": (torch.randn(4, 20),),
        "input_names": ["features"],
        "output_names": ["logits"],
        "dynamic_axes": {"features": {0: "batch"}},
    }
