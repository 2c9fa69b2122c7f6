"""An example user model module: a job names it as `model: {kind: "jobs.my_model:build"}`.

A builder takes the number of input features and outputs (plus any
`model.options` as keyword arguments) and returns a torch module mapping
[rows, in_features] float32 → [rows, out_features]. It never touches Ray,
files or checkpoints.
"""

from torch import nn


def build(in_features: int, out_features: int, width: int = 32, depth: int = 2) -> nn.Module:
    """A residual MLP: `depth` blocks of Linear → LayerNorm → GELU around a skip connection."""
    return ResidualMLP(in_features, out_features, width, depth)


class ResidualMLP(nn.Module):
    def __init__(self, in_features: int, out_features: int, width: int, depth: int):
        super().__init__()
        self.inp = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU()) for _ in range(depth)
        )
        self.out = nn.Linear(width, out_features)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)
