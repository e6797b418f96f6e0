"""Models, data and peers of the any-model benchmarks in benchmarks/run.py (issue 12).

Cases tabular_mlp, residual_mlp and transformer train the same members three ways:

reglab       ``reglab.train_population(build, configs, seeds, train=(X, y), epochs=E, batch_size=32)``.
torch_loop   the plain PyTorch recipe, one member after another: the model, ``torch.optim.Adam(lr=1e-3,
             eps=1e-7)``, a ``torch.randperm`` shuffle every epoch, batches of 32, ``BCEWithLogitsLoss``,
             ``l2 * w.pow(2).sum()`` added to the loss for each penalised weight, ``model.train()``.
torch_func   the PyTorch ensembling tutorial's recipe (https://pytorch.org/tutorials/intermediate/ensembling.html)
             trained: ``torch.func.stack_module_state(models)`` → stacked params and buffers, a base copy
             on the 'meta' device, ``vmap(functional_call(base, (params, buffers), (x,)), in_dims=(0, 0, 0),
             randomness="different")``; each member its own shuffle (X[order] gathered per member →
             (P, B, ...)), the loss summed over members, ``.backward()`` and one
             ``torch.optim.Adam(params.values(), lr=1e-3, eps=1e-7)`` over the stacked tensors (element-wise:
             P independent Adams). BatchNorm buffers are stacked and updated in place under vmap. A
             dropout rate is an attribute of the base module, not a tensor vmap can batch, so members
             whose configs differ in anything but L2 run as one stacked ensemble per config, one after
             another (the recipe stacks identical modules only).

All three see the same data, batch size, epochs, loss, penalties and Adam settings. The peers draw
member ``seed``'s initial weights with ``torch.manual_seed(seed)`` from the modules' own PyTorch
initialisation (the loop's member and the ensemble's member of one seed start equal); reglab's
default "keras" preset re-draws them with Keras's initialisers. ``TokenTransformer`` draws its
embedding from N(0, 0.05²) (PyTorch's N(0, 1) drowns out the zero-initialised positions, and the
peers then learn the order rule far more slowly than reglab's Keras-initialised members).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import make_classification
from torch import nn
from torch.func import functional_call, stack_module_state

import reglab

BATCH = 32
LR, EPS = 1e-3, 1e-7


# --------------------------------------------------------------------------------------------- data

def tabular():
    """``make_classification(6000, 8, n_informative=5, flip_y=0.2, random_state=0)``, X standardised."""
    X, y = make_classification(6000, 8, n_informative=5, flip_y=0.2, random_state=0)
    X = (X - X.mean(0)) / X.std(0)
    return X.astype(np.float32), y.astype(np.int64)


VOCAB, LENGTH = 50, 16


def token_sequences(n: int = 4000, seed: int = 0):
    """Sequences of ``LENGTH`` token ids from ``VOCAB``: one 7 and one 9 at random distinct positions among
    random other tokens; the label is whether the 7 comes before the 9 (balanced)."""
    g = np.random.default_rng(seed)
    others = np.setdiff1d(np.arange(VOCAB), [7, 9])
    X = others[g.integers(0, len(others), size=(n, LENGTH))]
    pos = np.argsort(g.random((n, LENGTH)), axis=1)[:, :2]   # two distinct positions per row
    rows = np.arange(n)
    X[rows, pos[:, 0]] = 7
    X[rows, pos[:, 1]] = 9
    return X.astype(np.int64), (pos[:, 0] < pos[:, 1]).astype(np.int64)


# ------------------------------------------------------------------------------------------- models
#
# Each model takes its config as keyword arguments (``l2`` too: the peers read it from the model) and
# names its L2-penalised weights in ``penalised``. ``build_*`` attach the same penalties for reglab.

class TabularMLP(nn.Sequential):
    """8-256-256-1, ReLU; L2 on the two hidden kernels."""

    penalised = ("0.weight", "2.weight")

    def __init__(self, l2: float = 0.0):
        super().__init__(nn.Linear(8, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))
        self.l2 = l2


def tabular_mlp(l2: float = 0.0) -> nn.Sequential:
    """The same layers as a plain nn.Sequential (what reglab's fused path takes)."""
    return nn.Sequential(*TabularMLP(l2).children())


class ResidualMLP(nn.Module):
    """Linear(8,128)-BatchNorm1d-ReLU, then ``blocks`` × ``h = h + Dropout(ReLU(BatchNorm1d(Linear(128,128)(h))))``,
    then Linear(128,1); L2 on the blocks' kernels."""

    def __init__(self, rate: float = 0.1, l2: float = 0.0, width: int = 128, blocks: int = 2):
        super().__init__()
        self.inp, self.bn = nn.Linear(8, width), nn.BatchNorm1d(width)
        self.fcs = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.bns = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(blocks))
        self.drop = nn.Dropout(rate)
        self.out = nn.Linear(width, 1)
        self.l2 = l2
        self.penalised = tuple(f"fcs.{i}.weight" for i in range(blocks))

    def forward(self, x):
        h = torch.relu(self.bn(self.inp(x)))
        for fc, bn in zip(self.fcs, self.bns):
            h = h + self.drop(torch.relu(bn(fc(h))))
        return self.out(h)


class TokenTransformer(nn.Module):
    """nn.Embedding(50, 32) + a learned positional parameter, a 2-layer nn.TransformerEncoder (d_model 32,
    4 heads, feed-forward 64, dropout 0.1, batch_first), mean over positions, Linear(32, 1); L2 on the
    feed-forward kernels."""

    def __init__(self, l2: float = 0.0, d_model: int = 32, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        nn.init.normal_(self.embed.weight, std=0.05)   # N(0, 1) by default: the positions would be drowned out
        self.pos = nn.Parameter(torch.zeros(LENGTH, d_model))
        layer = nn.TransformerEncoderLayer(d_model, 4, 64, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(d_model, 1)
        self.l2 = l2
        self.penalised = tuple(f"encoder.layers.{i}.{lin}.weight" for i in range(layers) for lin in ("linear1", "linear2"))

    def forward(self, x):
        return self.out(self.encoder(self.embed(x) + self.pos).mean(1))


def regularized(model: nn.Module) -> nn.Module:
    """``model`` with reglab's L2 penalty on the weights it names in ``penalised``."""
    if model.l2:
        reglab.regularize(model, penalties={name: reglab.L2(model.l2) for name in model.penalised})
    return model


def build_tabular(l2: float) -> nn.Sequential:
    m = tabular_mlp(l2)
    reglab.regularize(m[0], kernel=reglab.L2(l2))
    reglab.regularize(m[2], kernel=reglab.L2(l2))
    return m


def build_residual(rate: float, l2: float) -> ResidualMLP:
    return regularized(ResidualMLP(rate, l2))


def build_transformer(l2: float) -> TokenTransformer:
    return regularized(TokenTransformer(l2))


# Each case: the plain model (for the peers), reglab's build, the data, and the configs (× seeds = members).
CASES = {
    "tabular_mlp": dict(model=TabularMLP, build=build_tabular, data=tabular,
                        configs=[dict(l2=1e-4), dict(l2=1e-3)]),
    "residual_mlp": dict(model=ResidualMLP, build=build_residual, data=tabular,
                         configs=[dict(rate=0.1, l2=1e-4), dict(rate=0.3, l2=1e-3)]),
    "transformer": dict(model=TokenTransformer, build=build_transformer, data=token_sequences,
                        configs=[dict(l2=1e-4), dict(l2=1e-3)]),
}


def torch_data(X, y):
    """Inputs as tensors (token ids stay int64), targets as float (n, 1) for BCEWithLogitsLoss."""
    return torch.from_numpy(X), torch.from_numpy(y).float().unsqueeze(1)


def _penalty(model: nn.Module) -> torch.Tensor | float:
    params = dict(model.named_parameters())
    return model.l2 * sum(params[n].pow(2).sum() for n in model.penalised) if model.l2 else 0.0


# -------------------------------------------------------------------------------------------- peers

def train_loop(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, loss_fn, penalty,
               eps: float = 1e-8, device=None) -> nn.Module:
    """The hand-written PyTorch loop: Adam (lr 1e-3), a randperm reshuffle every epoch, batches of
    32, ``penalty(model)`` added to the loss. Every loop peer of benchmarks/run.py and gpu.py is this
    one (``device``: the order, drawn on the CPU, moved there once per epoch; X and y already there)."""
    opt = torch.optim.Adam(model.parameters(), lr=LR, eps=eps)
    gen = torch.Generator().manual_seed(seed)
    n = X.shape[0]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        if device is not None:
            order = order.to(device)
        for start in range(0, n, BATCH):
            idx = order[start:start + BATCH]
            loss = loss_fn(model(X[idx]), y[idx]) + penalty(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def torch_loop(make, config: dict, seed: int, X: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    """One member, the plain PyTorch recipe (see the module docstring)."""
    torch.manual_seed(seed)
    return train_loop(make(**config), X, y, epochs, seed, nn.BCEWithLogitsLoss(), _penalty, eps=EPS)


class Ensemble:
    """Members of one config (they may differ in L2 and seed) stacked for torch.func."""

    def __init__(self, make, configs: list[dict], seeds: list[int]):
        models = []
        for config, seed in zip(configs, seeds):
            torch.manual_seed(seed)
            models.append(make(**config))
        self.params, self.buffers = stack_module_state(models)   # leaves with requires_grad
        self.base = copy.deepcopy(models[0]).to("meta")
        self.make, self.configs = make, list(configs)
        self.l2 = torch.tensor([float(m.l2) for m in models])
        self.penalised = models[0].penalised
        self.seeds = list(seeds)

    def _call(self, params, buffers, x):
        return functional_call(self.base, (params, buffers), (x,))

    def train(self, X: torch.Tensor, y: torch.Tensor, epochs: int) -> "Ensemble":
        params, buffers, n = self.params, self.buffers, X.shape[0]
        forward = torch.vmap(self._call, in_dims=(0, 0, 0), randomness="different")
        opt = torch.optim.Adam(params.values(), lr=LR, eps=EPS)
        gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        l2 = self.l2
        self.base.train()
        for _ in range(epochs):
            order = torch.stack([torch.randperm(n, generator=g) for g in gens])   # (P, n): a shuffle per member
            for start in range(0, n, BATCH):
                idx = order[:, start:start + BATCH]
                logits = forward(params, buffers, X[idx])                          # (P, B, 1)
                data = F.binary_cross_entropy_with_logits(logits, y[idx], reduction="none").mean((1, 2))
                penalty = sum(params[name].pow(2).flatten(1).sum(1) for name in self.penalised)
                loss = (data + l2 * penalty).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        return self

    def member(self, i: int) -> nn.Module:
        """Member ``i`` as a plain module (its weights and buffers copied out of the stacks)."""
        model = self.make(**self.configs[i])
        model.load_state_dict({k: v[i].detach() for k, v in {**self.params, **self.buffers}.items()})
        return model


def group_members(configs: list[dict], seeds: list[int]) -> list[tuple[list[dict], list[int]]]:
    """Members in reglab's order (config-major), grouped into one ensemble per config that differs in
    more than L2 (a dropout rate lives in the base module: one value per stacked ensemble)."""
    groups: dict[tuple, tuple[list, list]] = {}
    for config in configs:
        key = tuple(sorted((k, v) for k, v in config.items() if k != "l2"))
        cs, ss = groups.setdefault(key, ([], []))
        for seed in seeds:
            cs.append(config)
            ss.append(seed)
    return list(groups.values())


def torch_func(make, configs: list[dict], seeds: list[int], X: torch.Tensor, y: torch.Tensor,
               epochs: int) -> list[Ensemble]:
    """Every member of ``configs`` × ``seeds`` as torch.func ensembles (one per group, one after another)."""
    return [Ensemble(make, cs, ss).train(X, y, epochs) for cs, ss in group_members(configs, seeds)]


# --------------------------------------------------------------------------------------- accuracies

@torch.no_grad()
def model_accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Training-set accuracy in eval mode (dropout off, BatchNorm running statistics)."""
    model.eval()
    try:
        return float(((model(X) > 0).float() == y).float().mean())
    finally:
        model.train()


def ensemble_accuracies(ensembles: list[Ensemble], X: torch.Tensor, y: torch.Tensor) -> list[float]:
    return [model_accuracy(e.member(i), X, y) for e in ensembles for i in range(len(e.seeds))]
