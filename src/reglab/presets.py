"""Training presets and seeded initialisation.

The ``keras`` preset reproduces the tutorials' setup: Glorot-uniform kernels, zero biases,
orthogonal recurrent kernels, LSTM forget-gate bias 1, Keras's Adam (lr 1e-3, ε = 1e-7 in the
epsilon-hat form), batch 32, reshuffled every epoch. The ``torch`` preset keeps PyTorch's own
initialisation (re-drawn from the seed) and torch.optim.Adam's ε placement.

Every run draws from three streams derived from its seed — initialisation, shuffling, and noise
(dropout masks, Gaussian noise) — so a population member and a standalone fit with the same seed
see the same random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from ._validate import check_choice


@dataclass(frozen=True)
class Preset:
    init: str              # "keras": Keras initialisers; "torch": the modules' reset_parameters()
    optimizer: str = "adam"
    lr: float = 1e-3
    epsilon: float = 1e-7
    epsilon_hat: bool = True  # Keras places ε after the bias correction of sqrt(v)
    batch_size: int = 32


PRESETS = {
    "keras": Preset(init="keras"),
    "torch": Preset(init="torch", epsilon=1e-8, epsilon_hat=False),
}


def get(preset, owner: str = "fit") -> Preset:
    if isinstance(preset, Preset):
        return preset
    check_choice(preset, "preset", owner, tuple(PRESETS))
    return PRESETS[preset]


@dataclass(frozen=True)
class Streams:
    """The three 63-bit seeds of one run."""

    init: int
    shuffle: int
    noise: int

    @classmethod
    def from_seed(cls, seed: int) -> "Streams":
        init, shuffle, noise = np.random.SeedSequence(int(seed)).generate_state(3, dtype=np.uint64)
        return cls(int(init) >> 1, int(shuffle) >> 1, int(noise) >> 1)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def initialize(model: nn.Module, preset="keras", seed: int = 0) -> nn.Module:
    """Re-draw every parameter of ``model`` from ``seed`` under ``preset``; returns the model. A frozen
    parameter (``requires_grad=False``: a pretrained part kept fixed) keeps its value; the others
    get the same draws as when it is not frozen."""
    frozen = [(p, p.detach().clone()) for p in model.parameters() if not p.requires_grad]
    _initialize(model, get(preset), Streams.from_seed(seed).init)
    for p, value in frozen:
        p.copy_(value)
    return model


def _initialize(model: nn.Module, preset: Preset, seed: int) -> None:
    if preset.init == "torch":
        def torch_init(module, gen):
            reset = _reset(module)
            if reset is not None and any(True for _ in module.parameters(recurse=False)):
                reset()

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in model.modules():
                _parametrized_init(module, torch_init, None)
        return
    gen = _generator(seed)
    for module in model.modules():
        _parametrized_init(module, _keras_init, gen)


def _parametrized_init(module: nn.Module, init, gen: torch.Generator | None) -> None:
    """``init(module, gen)`` (under no_grad; ``gen`` None: the global generator), also for a module with parametrized weights (``weight_norm``,
    ``spectral_norm``): its ``weight`` is then computed on each access, and an initialiser writing
    into it would change nothing. Such a module is drawn as a plain copy whose weights are set
    through the parametrization (its ``right_inverse``); spectral norm's power-iteration vectors
    are drawn again too, as the parametrization draws them when registered."""
    if not parametrize.is_parametrized(module):
        init(module, gen)
        return
    # The stand-in: the module's class before parametrization, its attributes, and plain copies of
    # its parameters (remove_parametrizations would edit the class that copies of the module share).
    cls = parametrize.type_before_parametrizations(module)
    plain = cls.__new__(cls)
    plain.__dict__.update(module.__dict__)
    plain._modules = {k: v for k, v in module._modules.items() if k != "parametrizations"}
    plain._parameters = {k: None if v is None else nn.Parameter(v.detach().clone())
                         for k, v in module._parameters.items()}
    plain._parameters.update({name: nn.Parameter(getattr(module, name).detach().clone())
                              for name in module.parametrizations})
    init(plain, gen)
    for name, p in plain._parameters.items():
        if name in module.parametrizations:
            setattr(module, name, p.detach().clone())   # through right_inverse
        elif p is not None:
            module._parameters[name].copy_(p)
    for chain in module.parametrizations.values():
        for step in chain:
            if isinstance(step, _SpectralNorm) and hasattr(step, "_u"):
                for vector in (step._u, step._v):
                    vector.copy_(F.normalize(torch.randn(vector.numel(), generator=gen, dtype=vector.dtype),
                                             dim=0, eps=step.eps))
                step._power_method(step._reshape_weight_to_matrix(chain.original), 15)


def _reset(module: nn.Module):
    """The module's own re-initialisation (``nn.MultiheadAttention`` names it ``_reset_parameters``)."""
    return getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)


def _glorot_(p: torch.Tensor, fan_in: int, fan_out: int, gen: torch.Generator) -> None:
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    p.uniform_(-bound, bound, generator=gen)


def _keras_attention(m: nn.MultiheadAttention, gen: torch.Generator) -> None:
    """Keras's MultiHeadAttention: glorot-uniform einsum kernels, zero biases.

    Keras's query/key/value kernels have shape (dim, heads, head_dim) and its output kernel
    (heads, head_dim, embed); its glorot fans for such shapes are fan_in = shape[-2] * prod(shape[:-2])
    and fan_out = shape[-1] * prod(shape[:-2]).
    """
    H, E = m.num_heads, m.embed_dim
    hd = E // H
    if m._qkv_same_embed_dim:
        for block in m.in_proj_weight.view(3, E, E):
            _glorot_(block, H * E, hd * E, gen)
    else:
        for w, dim in ((m.q_proj_weight, E), (m.k_proj_weight, m.kdim), (m.v_proj_weight, m.vdim)):
            _glorot_(w, H * dim, hd * dim, gen)
    _glorot_(m.out_proj.weight, hd * H, E * H, gen)
    for b in (m.in_proj_bias, m.out_proj.bias):
        if b is not None:
            nn.init.zeros_(b)
    for b in (m.bias_k, m.bias_v):
        if b is not None:
            nn.init.xavier_normal_(b, generator=gen)


def _keras_init(module: nn.Module, gen: torch.Generator) -> None:
    if isinstance(module, nn.MultiheadAttention):
        _keras_attention(module, gen)
    elif isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        pass   # an attention's output projection: initialised with its attention (above)
    elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        nn.init.xavier_uniform_(module.weight, generator=gen)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.RNNBase):
        hidden = module.hidden_size
        for name, p in module.named_parameters(recurse=False):
            if name.startswith("weight_ih"):
                # Keras draws one kernel of shape (in, gates * units): the same fans as PyTorch's stack.
                nn.init.xavier_uniform_(p, generator=gen)
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(p, generator=gen)
            elif name.startswith("bias"):
                nn.init.zeros_(p)
                if module.mode == "LSTM" and name.startswith("bias_ih"):
                    p[hidden:2 * hidden] = 1.0   # Keras's unit_forget_bias (gate order i, f, g, o)
            elif name.startswith("weight_hr"):
                nn.init.xavier_uniform_(p, generator=gen)
    elif isinstance(module, nn.Embedding):
        nn.init.uniform_(module.weight, -0.05, 0.05, generator=gen)
        if module.padding_idx is not None:   # the module's padding row is zeros (Keras has no such row)
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        if getattr(module, "weight", None) is not None:
            nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif any(True for _ in module.parameters(recurse=False)) and _reset(module) is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (), generator=gen)))
            _reset(module)()
