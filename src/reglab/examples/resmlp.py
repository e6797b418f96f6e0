"""A residual MLP for tabular data with stochastic depth: the model factory of resmlp_toolbox.toml.

Each block is ``h + DropPath(p_i)(Linear(ReLU(BatchNorm(h))))`` with timm's linear rule
``p_i = linspace(0, drop_path, blocks)``: the deeper the block, the more often it is skipped.
"""

import torch
from torch import nn

import reglab


class ResMLP(nn.Module):
    def __init__(self, inputs: int, width: int, blocks: int, drop_path: float):
        super().__init__()
        self.inp = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width))
                                    for _ in range(blocks))
        self.drops = nn.ModuleList(reglab.DropPath(float(p)) for p in reglab.drop_path_rates(drop_path, blocks))
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        h = self.inp(x)
        for block, drop in zip(self.blocks, self.drops):
            h = h + drop(block(h))
        return self.out(torch.relu(h))


def resmlp(drop_path: float = 0.0, inputs: int = 30, width: int = 64, blocks: int = 4) -> ResMLP:
    return ResMLP(inputs, width, blocks, drop_path)
