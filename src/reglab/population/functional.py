"""The general population: any ``nn.Module`` whose members share one architecture.

The members' parameters and buffers are stacked with a leading member dimension and one private
copy of the model (the *base*) runs every member at once through ``torch.func.functional_call``
under ``torch.func.vmap``. What ``vmap`` cannot do by itself is done around it:

- **Random numbers.** Each member must draw its dropout masks and noise from its own generator,
  exactly as its standalone ``reglab.fit`` draws them from the global one. The base's random
  layers (``nn.Dropout``/``Dropout1d/2d/3d``, reglab's noise layers, every
  :class:`reglab.augment.RandomLayer`: augmentation, DropPath, AlphaDropout) and random functions called in
  a custom ``forward()`` (``F.dropout``, the attention dropout of ``scaled_dot_product_attention``
  and ``nn.MultiheadAttention``) are *sites*. A probe (one forward of the base for one member,
  once per input shape) lists the sites in call order with their shapes; before each forward
  every member draws its tensors for every site from its own generator, outside ``vmap``, and the
  sites consume them in order. A ``RandomLayer`` site is drawn by each member's own layer
  (``layer.sample(shape, dtype, device, generator)``) and run as the base's ``layer.transform``
  under ``vmap``. Any other random call fails under ``vmap(randomness="error")`` and
  is reported with the module to change.
- **Recurrent layers.** ``aten::lstm``/``gru``/``rnn`` have no batching rule; the base's
  ``nn.LSTM``/``GRU``/``RNN`` run as cell loops written for one member, which ``vmap`` batches.
- **Activity penalties** are returned from the vmapped function (the layer's output), not stored
  by hooks, and each member's coefficient is applied outside.
- **Buffers** (BatchNorm running statistics, ``num_batches_tracked``) are stacked too and updated
  in place per member; members that have stopped keep theirs.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import math
import os
from dataclasses import dataclass

import torch
from torch._C._functorch import is_batchedtensor

try:   # functorch's own wrapping (torch._functorch.vmap uses it): a layer may run on the stacked tensors
    from torch._C._functorch import _add_batch_dim, _unwrap_batched, maybe_get_level
except ImportError:  # pragma: no cover - an older or newer PyTorch: the batched formulas run instead
    _unwrap_batched = None
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import _SpectralNorm, _WeightNorm
from torch.overrides import TorchFunctionMode

from ..attach import registry
from ..augment import RandomLayer
from ..layers import GaussianDropout, GaussianNoise, SequenceDropout
from ..optim import flat_parameters
from .merge import MergedConstraint, MergedPenalty, MergedRules
from . import bernoulli

# Modules whose randomness reglab draws per member, and the attribute holding each member's rate.
RATE_ATTR = {nn.Dropout: "p", nn.Dropout1d: "p", nn.Dropout2d: "p", nn.Dropout3d: "p",
             GaussianNoise: "stddev", GaussianDropout: "rate"}
ADDITIVE = (GaussianNoise,)


def site_kind(module: nn.Module) -> type | None:
    """The random layer type ``module`` is (for drawing), or None."""
    if isinstance(module, RandomLayer):
        return type(module)
    if isinstance(module, (nn.AlphaDropout, nn.FeatureAlphaDropout)):
        return None
    for cls in (SequenceDropout, GaussianNoise, GaussianDropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Dropout):
        if isinstance(module, cls):
            return cls
    return None


def noise_shape(kind, shape: tuple) -> tuple:
    """Shape of what a random layer of ``kind`` draws for an input of ``shape`` (as PyTorch draws it)."""
    if kind is SequenceDropout:
        return (shape[0], 1) + tuple(shape[2:])
    if kind in (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d):
        batched = {nn.Dropout1d: len(shape) == 3, nn.Dropout2d: True, nn.Dropout3d: len(shape) == 5}[kind]
        if not batched:
            return (shape[0],) + (1,) * (len(shape) - 1)
        return tuple(shape[:2]) + (1,) * (len(shape) - 2)
    return tuple(shape)


def memory_order(x: torch.Tensor) -> tuple | None:
    """The dim order in which ``empty_like(x)`` lays ``x``'s elements out, when not the plain one.

    ``nn.Dropout`` draws its mask into ``empty_like(x)``, which keeps a permuted dense layout (e.g.
    the batch_first output of ``nn.MultiheadAttention``, a transposed (L, B, E) tensor), so the
    mask's values follow memory order, not index order.
    """
    if x.is_contiguous() or x.dim() < 2:
        return None
    order = tuple(sorted(range(x.dim()), key=lambda d: (-x.stride(d), d)))
    return order if x.permute(order).is_contiguous() else None


def draw(kind, rate: float, shape: tuple, dtype, generator, device=None, order: tuple | None = None):
    """What one member's random layer draws in training, as the module itself would draw it from a
    generator in the same state; None when it draws nothing and leaves the input as it is.

    Dropout (any kind): ``empty(shape).bernoulli_(1 - p) / (1 - p)``, a multiplier (zeros, drawing
    nothing, for p = 1); GaussianNoise: ``randn(shape) * stddev``, added; GaussianDropout:
    ``1 + randn(shape) * sqrt(rate / (1 - rate))``, a multiplier.
    """
    if rate == 0:
        return None
    if kind is GaussianNoise:
        return torch.randn(shape, dtype=dtype, generator=generator, device=device) * rate
    if kind is GaussianDropout:
        stddev = (rate / (1.0 - rate)) ** 0.5
        return 1.0 + torch.randn(shape, dtype=dtype, generator=generator, device=device) * stddev
    if rate == 1:   # as torch: all dropped, nothing drawn
        return torch.zeros(shape, dtype=dtype, device=device)
    # drawn in memory order (see memory_order), returned in index order
    noise = torch.empty(shape if order is None else [shape[d] for d in order], dtype=dtype, device=device)
    bernoulli.masks([(noise, 1 - rate, _mask_constants((rate,), dtype)[1][0])], generator)
    return noise if order is None else noise.permute([order.index(d) for d in range(len(order))])


@functools.lru_cache(maxsize=256)
def _mask_constants(rates: tuple, dtype: torch.dtype) -> tuple[list, list]:
    """Per member: the threshold of its keep probability 1 - rate (:func:`bernoulli.threshold`) and
    the kept value 1 / (1 - rate) in ``dtype`` (as ``div_`` computes it)."""
    one = torch.ones((), dtype=dtype)
    return ([bernoulli.threshold(1 - r) for r in rates],
            [float(one / (1 - r)) if 0 < r < 1 else 1.0 for r in rates])


# Draws of fewer elements (all members, all sites of one forward) are made in turn rather than
# ahead in a thread: the hand-over (a generator state saved, a task queued and awaited: ~0.06 ms on
# an idle Xeon core) costs as much as drawing ~32k mask elements (bernoulli.py, ~1.9 ns each).
AHEAD_MIN = 1 << 15


@functools.cache
def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """Threads that draw members' random tensors: ``os.cpu_count()`` of them for the member-parallel
    draws of ModulePopulation._draw_all, one for the draws made ahead by _take_draws."""
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="reglab-draw")


class NotBatchable(ValueError):
    """A module the population cannot run for every member at once."""


@dataclass
class _Site:
    kind: object          # a random layer type, "dropout" (F.dropout) or "attention" (SDPA dropout)
    name: str             # module name for layers, the function for calls
    rates: list | None    # per-member rates of a layer; one shared rate for a function call
    shape: tuple = ()
    order: tuple | None = None   # memory order of a dropout's input (see memory_order)
    members: list | None = None  # a RandomLayer site: each member's own layer, which samples for it


class _Sites(TorchFunctionMode):
    """Random function calls in a forward: recorded (``probing``) or given each member's tensors.

    ``F.dropout`` and ``F.scaled_dot_product_attention`` with dropout are sites.
    ``F.multi_head_attention_forward`` (nn.MultiheadAttention) runs as a copy of PyTorch's own
    function whose ``dropout`` and ``scaled_dot_product_attention`` are these sites. Being active,
    the mode also keeps attention off its fused inference kernels, which vmap cannot batch.
    """

    def __init__(self, owner, probing: bool):
        super().__init__()
        self.owner, self.probing, self.found = owner, probing, False
        names = dict(vars(F), dropout=self.dropout, scaled_dot_product_attention=self.attention,
                     has_torch_function=lambda *a: False)
        code = F.multi_head_attention_forward
        self.mha = type(code)(code.__code__, names, code.__name__, code.__defaults__, code.__closure__)
        self.mha.__kwdefaults__ = code.__kwdefaults__

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            return self.dropout(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return self.attention(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            return self.mha(*args, **kwargs)
        return func(*args, **kwargs)

    def dropout(self, input, p=0.5, training=True, inplace=False):
        if not training or p == 0:
            return input
        if self.probing:
            self.found = True
            self.owner._probe_calls.append(_Site("dropout", "F.dropout", [float(p)], tuple(input.shape),
                                                 memory_order(input)))
            return input
        noise = self.owner._next("F.dropout")
        return input if noise is None else input * noise

    def attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if dropout_p == 0 and (self.probing or enable_gqa):
            return F.scaled_dot_product_attention(query, key, value, attn_mask, 0.0, is_causal, scale=scale,
                                                  enable_gqa=enable_gqa)
        if dropout_p == 0:   # under vmap the fused kernels have no batching rule: the math path, batched
            return _attention(query, key, value, attn_mask, is_causal, scale, None)
        if self.probing:
            self.found = True
            shape = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2]) + (query.shape[-2], key.shape[-2])
            self.owner._probe_calls.append(_Site("attention", "scaled_dot_product_attention", [float(dropout_p)], tuple(shape)))
            return F.scaled_dot_product_attention(query, key, value, attn_mask, 0.0, is_causal, scale=scale,
                                                  enable_gqa=enable_gqa)
        if enable_gqa:
            raise NotBatchable("scaled_dot_product_attention(enable_gqa=True) with dropout is not supported in a population.")
        return _attention(query, key, value, attn_mask, is_causal, scale, self.owner._next("scaled_dot_product_attention"))


# The math path's softmax where a mask is given: a row whose every key is masked gives zeros
# (PyTorch 2.5 on), not NaN. Without a mask (or with only the causal one) no row is all -inf and the
# plain softmax gives the same values at a third of the cost (forward and backward of the
# Transformer benchmark's (10, 32, 4, 16, 16) scores, Intel Xeon: 0.60 against 1.8 ms).
_safe_softmax = getattr(torch, "_safe_softmax", torch.softmax)


def _attention(q, k, v, mask, causal, scale, noise):
    """``scaled_dot_product_attention`` with its dropout mask given: PyTorch's math path on the CPU
    (the one it takes when dropout is on), computed the same way."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    root = math.sqrt(scale)
    attn = (q * root) @ (k * root).transpose(-2, -1)
    L, S = q.shape[-2], k.shape[-2]
    if causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
        attn = attn.masked_fill(~keep, float("-inf"))
    if mask is not None:
        attn = attn.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else attn + mask
    attn = torch.softmax(attn, -1) if mask is None else _safe_softmax(attn, -1)
    if noise is not None:
        attn = attn * noise
    return attn @ v


def _batched(*tensors) -> bool:
    """Whether any of ``tensors`` is one of vmap's batched tensors (None counts as not)."""
    return any(t is not None and is_batchedtensor(t) for t in tensors)


def _rnn_forward(module: nn.RNNBase):
    """A per-member cell loop for ``module`` (LSTM/GRU/RNN) that vmap can batch. One member outside
    vmap (a population of one) runs PyTorch's own kernel, unless it would draw the dropout between
    layers (that mask comes from the member's generator, through the loop)."""
    native = type(module).forward.__get__(module)

    def forward(input, hx=None):
        m = module
        if not (m.dropout and m.training) and not _batched(input, hx if isinstance(hx, torch.Tensor) else None,
                                                               *(hx if isinstance(hx, tuple) else ()),
                                                               *(getattr(m, n) for n in m._flat_weights_names)):
            return native(input, hx)
        if m.proj_size:
            raise NotBatchable(f"{type(m).__name__}(proj_size={m.proj_size}) is not supported in a population; "
                               "train it with reglab.fit.")
        x = input if m.batch_first else input.transpose(0, 1)          # (B, T, F)
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
        B, T = x.shape[:2]
        dirs = 2 if m.bidirectional else 1
        lstm = m.mode == "LSTM"
        if hx is None:
            zeros = x.new_zeros(m.num_layers * dirs, B, m.hidden_size)
            h0, c0 = zeros, zeros
        elif lstm:
            h0, c0 = hx
        else:
            h0, c0 = hx, None
        if unbatched and hx is not None:
            h0 = h0.unsqueeze(1)
            c0 = c0.unsqueeze(1) if c0 is not None else None
        seq, finals_h, finals_c = x, [], []
        for layer in range(m.num_layers):
            outs = []
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih, w_hh = getattr(m, "weight_ih" + sfx), getattr(m, "weight_hh" + sfx)
                b_ih, b_hh = (getattr(m, "bias_ih" + sfx), getattr(m, "bias_hh" + sfx)) if m.bias else (None, None)
                xw = F.linear(seq, w_ih, b_ih)
                steps = xw.unbind(1)
                h, c = h0[layer * dirs + d], (c0[layer * dirs + d] if c0 is not None else None)
                out = [None] * T
                for t in (range(T - 1, -1, -1) if d else range(T)):
                    hw = F.linear(h, w_hh, b_hh)
                    gi = steps[t]
                    if lstm:
                        i, f, g, o = (gi + hw).chunk(4, -1)
                        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                        h = torch.sigmoid(o) * torch.tanh(c)
                    elif m.mode == "GRU":
                        ir, iz, inn = gi.chunk(3, -1)
                        hr, hz, hn = hw.chunk(3, -1)
                        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                        h = (1 - z) * torch.tanh(inn + r * hn) + z * h
                    else:
                        pre = gi + hw
                        h = torch.tanh(pre) if m.mode == "RNN_TANH" else torch.relu(pre)
                    out[t] = h
                outs.append(torch.stack(out, 1))
                finals_h.append(h)
                finals_c.append(c)
            seq = outs[0] if dirs == 1 else torch.cat(outs, -1)
            if m.dropout and m.training and layer < m.num_layers - 1:
                # aten::lstm draws its inter-layer mask on the time-major (T, B, H) output.
                seq = F.dropout(seq.transpose(0, 1).contiguous(), m.dropout, True).transpose(0, 1)
        output = seq if m.batch_first else seq.transpose(0, 1)
        h_n = torch.stack(finals_h, 0)
        if unbatched:
            output, h_n = output.squeeze(0), h_n.squeeze(1)
        if lstm:
            c_n = torch.stack(finals_c, 0)
            return output, (h_n, c_n.squeeze(1) if unbatched else c_n)
        return output, h_n

    return forward


def _level(*tensors):
    """The vmap level all of ``tensors`` (None skipped) are batched at, when every one is batched
    and at one level; None otherwise (or without access to functorch's wrapping)."""
    present = [t for t in tensors if t is not None]
    if _unwrap_batched is None or not present or not all(is_batchedtensor(t) for t in present):
        return None
    level = maybe_get_level(present[0])
    return level if all(maybe_get_level(t) == level for t in present) else None


def _stacked(t, level):
    """A batched tensor as the stacked (P, ...) tensor under it (None stays None)."""
    if t is None:
        return None
    value, dim = _unwrap_batched(t, level)
    return value.movedim(dim, 0)


def _stacked_batch_norm(m: nn.modules.batchnorm._BatchNorm, x: torch.Tensor):
    """All members' BatchNorm in one call of PyTorch's own kernel, outside vmap: member p's channel c
    is channel p·C + c of an input (B, P·C, ...), so each member's statistics, running averages
    (updated in place in the stacked buffers) and gradients are its own, bit for bit what the member's
    own BatchNorm computes. None where this does not apply (the batched formulas then run): no access
    to functorch's wrapping, nested vmaps, unstacked weights or buffers, or momentum None (its factor
    is 1 / num_batches_tracked, a per-member value)."""
    if x.dim() not in (2, 3, 4, 5):
        return None
    tensors = [m.weight, m.bias, m.running_mean, m.running_var]
    level = _level(*tensors)
    if level is None or (is_batchedtensor(x) and maybe_get_level(x) != level):
        return None
    update = m.training and m.track_running_stats
    if update and m.momentum is None:
        return None
    weight, bias, mean, var = (_stacked(t, level) for t in tensors)
    if any(t is not None and not t.is_contiguous() for t in (mean, var)):
        return None   # the kernel updates the running averages through a flat view of them
    P = next(t for t in (weight, bias, mean, var) if t is not None).shape[0]
    if is_batchedtensor(x):
        xs, dim = _unwrap_batched(x, level)
        xs = xs.movedim(dim, 1)                                         # (B, P, C, ...)
    else:
        xs = x.unsqueeze(1).expand(x.shape[0], P, *x.shape[1:])        # a batch every member shares
    B, C, rest = xs.shape[0], xs.shape[2], xs.shape[3:]
    if update:
        m.num_batches_tracked.add_(1)
    use_batch = m.training or not m.track_running_stats
    out = F.batch_norm(xs.reshape(B, P * C, *rest), None if mean is None else mean.view(-1),
                       None if var is None else var.view(-1), None if weight is None else weight.reshape(-1),
                       None if bias is None else bias.reshape(-1), use_batch, m.momentum if update else 0.0, m.eps)
    return _add_batch_dim(out.view(B, P, C, *rest), 1, level)


def _batch_norm_forward(m: nn.modules.batchnorm._BatchNorm):
    """BatchNorm for one member that vmap batches: PyTorch's kernel on all members' stacked tensors
    at once (:func:`_stacked_batch_norm`); where that does not apply, plain tensor ops for one member
    (vmap's rule for ``aten::batch_norm`` with per-member running statistics is many times slower),
    the same formulas as ``F.batch_norm``: batch statistics in training (biased variance to normalise,
    the unbiased one into ``running_var``), running statistics in eval; momentum None is the
    cumulative average over ``num_batches_tracked``."""

    native = type(m).forward.__get__(m)

    def forward(x):
        if not _batched(x, m.weight, m.running_mean):   # one member, outside vmap: PyTorch's own kernel
            return native(x)
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"{type(m).__name__} expected 2D-5D input (got {x.dim()}D input)")
        stacked = _stacked_batch_norm(m, x)
        if stacked is not None:
            return stacked
        dims = [0] + list(range(2, x.dim()))
        shape = (1, -1) + (1,) * (x.dim() - 2)
        use_batch = m.training or not m.track_running_stats
        if use_batch:
            # the two-pass variance over the centred input, which normalising needs anyway (torch's
            # var reduction and its backward cost about twice as much under vmap)
            mean = x.mean(dims)
            centred = x - mean.view(shape)
            var = (centred * centred).mean(dims)
            if m.training and m.track_running_stats:
                m.num_batches_tracked.add_(1)
                factor = (1.0 / m.num_batches_tracked) if m.momentum is None else m.momentum
                n = x.numel() // x.shape[1]
                with torch.no_grad():
                    m.running_mean.mul_(1 - factor).add_(mean.detach() * factor)
                    m.running_var.mul_(1 - factor).add_(var.detach() * (factor * n / max(n - 1, 1)))
        else:
            centred, var = x - m.running_mean.view(shape), m.running_var
        out = centred * torch.rsqrt(var.view(shape) + m.eps)
        if m.affine:
            out = out * m.weight.view(shape) + m.bias.view(shape)
        return out

    return forward


def _linear(x, w, b):
    """``x Wᵢᵀ + bᵢ`` for each member i: x (P, N, in), W (P, out, in), b (P, out) or None; one batched
    product that starts from the bias, its output contiguous. The stacked-layer path's
    ``_StackedLinear`` forward; the general path calls it as plain ops, since that autograd.Function
    would go through functorch's machinery for custom functions under vmap (~1 ms a call, Intel Xeon)."""
    wt = w.transpose(1, 2)
    return torch.bmm(x, wt) if b is None else torch.baddbmm(b.unsqueeze(1), x, wt)


def _linear_forward(m: nn.Linear):
    """nn.Linear for one member that vmap batches: on the stacked tensors, every member's
    ``x Wᵀ + b`` is one batched product that starts from the bias (:func:`_linear`), where vmap's
    rule adds the bias in a pass of its own. An input every member shares, and one member outside
    vmap, run PyTorch's own forward."""
    native = type(m).forward.__get__(m)

    def forward(x):
        level = _level(x, m.weight, m.bias)
        if level is None:
            return native(x)
        xs = _stacked(x, level)
        out = _linear(xs.reshape(xs.shape[0], -1, xs.shape[-1]), _stacked(m.weight, level), _stacked(m.bias, level))
        return _add_batch_dim(out.view(xs.shape[:-1] + (out.shape[-1],)), 0, level)

    return forward


def _embedding_forward(m: nn.Embedding):
    """nn.Embedding with ``padding_idx`` for one member under vmap. PyTorch's batching rule for the
    embedding's backward keeps only the first member's padding row out of the gradient (it offsets
    the members' ids into one table but not ``padding_idx``), so every other member's padding row
    trained. Here the lookup runs without ``padding_idx`` and the padding positions are detached:
    the same values, and no member's padding row gets a gradient, as in PyTorch's own module."""
    native = type(m).forward.__get__(m)

    def forward(x):
        if not _batched(m.weight):
            return native(x)
        out = F.embedding(x, m.weight, None, m.max_norm, m.norm_type, m.scale_grad_by_freq, m.sparse)
        return torch.where((x == m.padding_idx).unsqueeze(-1), out.detach(), out)

    return forward


def _embedding_bag_forward(m: nn.EmbeddingBag):
    """nn.EmbeddingBag on fixed-length bags ((B, L) ids, no offsets or per-sample weights) for one
    member under vmap: a lookup and a sum, mean or max over each bag, leaving out ``padding_idx``
    (an all-padding bag gives zeros), as PyTorch's kernel does. ``embedding_bag`` has no batching
    rule with a padding index, and vmap would run it member by member."""
    native = type(m).forward.__get__(m)

    def forward(input, offsets=None, per_sample_weights=None):
        if (not _batched(m.weight) or offsets is not None or per_sample_weights is not None or input.dim() != 2
                or m.max_norm is not None):
            return native(input, offsets, per_sample_weights)
        emb = F.embedding(input, m.weight, scale_grad_by_freq=m.scale_grad_by_freq)
        keep = None if m.padding_idx is None else (input != m.padding_idx).unsqueeze(-1)
        if m.mode == "max":
            if keep is None:
                return emb.max(-2).values
            return torch.where(keep.any(-2), emb.masked_fill(~keep, float("-inf")).max(-2).values, 0)
        total = emb.sum(-2) if keep is None else (emb * keep).sum(-2)
        if m.mode == "sum":
            return total
        return total / (input.shape[-1] if keep is None else keep.sum(-2).clamp_min(1))

    return forward


def _power_method(m):
    """Spectral norm's power iteration for one member under vmap: PyTorch's writes each vector with
    ``F.normalize(..., out=)``, which vmap cannot batch; the same numbers are copied into the
    member's vectors in place."""

    @torch.no_grad()
    def power(weight_mat, n_power_iterations):
        for _ in range(n_power_iterations):
            m._u.copy_(F.normalize(torch.mv(weight_mat, m._v), dim=0, eps=m.eps))
            m._v.copy_(F.normalize(torch.mv(weight_mat.H, m._u), dim=0, eps=m.eps))

    return power


def _weight_norm_forward(m):
    """weight_norm's ``g · v / |v|`` for one member under vmap (``|v|`` over every dim but ``dim``, or
    over all of them for ``dim=None``), as PyTorch decomposes ``torch._weight_norm``; neither it nor
    ``norm_except_dim`` has a batching rule, and vmap would run them member by member."""
    native = type(m).forward.__get__(m)

    def forward(weight_g, weight_v):
        if not _batched(weight_v):
            return native(weight_g, weight_v)
        dims = None if m.dim == -1 else [d for d in range(weight_v.dim()) if d != m.dim % weight_v.dim()]
        return weight_v * (weight_g / torch.linalg.vector_norm(weight_v, 2, dim=dims, keepdim=dims is not None))

    return forward


def _sdpa_mask(m: nn.MultiheadAttention, query, key_padding_mask, attn_mask, is_causal):
    """What ``F.multi_head_attention_forward`` hands ``scaled_dot_product_attention`` for one member's
    self-attention without weights: ``(mask, causal)``, the merged float mask (B, H, L, L) or
    (1, 1, L, L) or None, and whether attention is causal; None where PyTorch's own function should
    run instead (and report a mask it does not accept). Computed as that function does, under vmap."""
    B, L = tuple(query.shape[:2]) if m.batch_first else (query.shape[1], query.shape[0])
    H = m.num_heads
    padding = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                other_type=F._none_or_dtype(attn_mask), other_name="attn_mask", target_type=query.dtype)
    mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                             target_type=query.dtype, check_other=False)
    if is_causal and mask is None:
        return None
    if is_causal and padding is None:
        return None, True                       # the causal hint goes to scaled_dot_product_attention
    if mask is not None:
        if tuple(mask.shape) == (L, L):
            mask = mask.unsqueeze(0)
        elif tuple(mask.shape) != (B * H, L, L):
            return None
    if padding is not None:
        if tuple(padding.shape) != (B, L):
            return None
        padding = padding.view(B, 1, 1, L).expand(-1, H, -1, -1).reshape(B * H, 1, L)
        mask = padding if mask is None else mask + padding
    if mask is not None:
        mask = mask.unsqueeze(0) if mask.size(0) == 1 else mask.view(B, H, -1, L)
    return mask, False


def _stacked_self_attention(m: nn.MultiheadAttention, x: torch.Tensor, draw, mask=None, causal=False):
    """Every member's self-attention ``m(x, x, x, need_weights=False)`` on the stacked tensors outside
    vmap, with the merged mask (:func:`_sdpa_mask`) and causal flag PyTorch's function would hand
    ``scaled_dot_product_attention``; None where this does not apply (PyTorch's function then runs
    under vmap).

    vmap runs ``F.multi_head_attention_forward`` one member's op at a time, and its rules lay the
    packed projection and the heads out in (P, L, B, 3, H, d)-like orders that each following op
    copies (the Transformer benchmark, Intel Xeon: about a fifth of the step, select's backward
    filling three zero tensors of the projection's size). Here the projection is one batched
    product per member (:func:`_linear`), the heads are laid out once as (3, P, B, H, L, d), and
    attention is the math path ``scaled_dot_product_attention`` takes with dropout
    (:func:`_attention`, each member's dropout mask (P, B, H, L, S) from its own generator, which
    ``draw()`` gives once the path applies): the same arithmetic as each member's own module.
    """
    weights = (m.in_proj_weight, m.in_proj_bias, m.out_proj.weight, m.out_proj.bias)
    level = _level(*weights)
    if level is None or x.dim() != 3 or any(is_batchedtensor(t) and maybe_get_level(t) != level
                                            for t in (x, mask) if t is not None):
        return None
    noise = draw() if m.training and m.dropout > 0 else None
    w_in, b_in, w_out, b_out = (_stacked(t, level) for t in weights)
    P = w_in.shape[0]
    xs = _stacked(x, level) if is_batchedtensor(x) else x.unsqueeze(0).expand(P, *x.shape)
    if not m.batch_first:
        xs = xs.transpose(1, 2)                                     # (P, B, L, E)
    _, B, L, E = xs.shape
    H = m.num_heads
    d = E // H
    # the rows in the order they lie in memory: (B, L), or (L, B) for a time-major contiguous input
    time_major = not xs.is_contiguous() and xs.transpose(1, 2).is_contiguous()
    rows = xs.transpose(1, 2) if time_major else xs
    qkv = _linear(rows.reshape(P, -1, E), w_in, b_in)   # (P, rows, 3E)
    if time_major:
        qkv = qkv.view(P, L, B, 3, H, d).permute(3, 0, 2, 4, 1, 5)
    else:
        qkv = qkv.view(P, B, L, 3, H, d).permute(3, 0, 1, 4, 2, 5)
    q, k, v = qkv.contiguous().unbind(0)                            # (P, B, H, L, d) each
    if mask is not None:   # a member's (B, H, L, L) or (1, 1, L, L), or one every member shares
        mask = _stacked(mask, level) if is_batchedtensor(mask) else mask.unsqueeze(0)
    o = _attention(q, k, v, mask, causal, None, None if noise is None else _stacked(noise, level))
    o = o.permute(0, 3, 1, 2, 4) if time_major else o.permute(0, 1, 3, 2, 4)
    out = _linear(o.reshape(P, -1, E), w_out, b_out)
    out = out.view(P, L, B, E).transpose(1, 2) if time_major else out.view(P, B, L, E)
    return _add_batch_dim(out if m.batch_first else out.transpose(1, 2), 0, level)


def _attention_forward(m: nn.MultiheadAttention, owner):
    """nn.MultiheadAttention for one member that vmap batches: self-attention without the attention
    weights (what nn.TransformerEncoderLayer asks for), masked or not, runs on all members' stacked
    tensors (:func:`_stacked_self_attention`); anything else (the weights, cross-attention, bias_k,
    separate projection weights), and one member outside vmap, runs PyTorch's own forward (through
    :class:`_Sites`)."""
    native = type(m).forward.__get__(m)

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if (query is key and key is value and not need_weights and m._qkv_same_embed_dim and m.bias_k is None
                and not m.add_zero_attn and _batched(m.in_proj_weight) and query.dim() == 3):
            masks = _sdpa_mask(m, query, key_padding_mask, attn_mask, is_causal)
            out = None if masks is None else _stacked_self_attention(
                m, query, lambda: owner._next("scaled_dot_product_attention"), *masks)
            if out is not None:
                return out, None
        return native(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                      attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)

    return forward


def _settings(module: nn.Module, read: set | None = None) -> tuple:
    """The plain attributes that change what ``module`` computes (its rate excepted for random
    layers); with ``read`` (see :func:`module_reads`), only those its forward reads."""
    skip = {"training", "_reglab"}
    kind = site_kind(module)
    if kind is not None and issubclass(kind, RandomLayer):
        skip |= set(kind.member_settings)   # only change what each member's own layer samples
    elif kind is not None:
        skip |= {RATE_ATTR.get(kind, "p"), "inplace"}
    simple = (int, float, str, bool, type(None))
    out = []
    for key, value in sorted(vars(module).items()):
        if key.startswith("_") or key in skip or (read is not None and key not in read):
            continue
        if isinstance(value, simple) or (isinstance(value, tuple) and all(isinstance(v, simple) for v in value)):
            out.append((key, value))
    return tuple(out)


def signature(model: nn.Module, reads: dict | None = None) -> tuple:
    """What members must share to run in one population: module tree, shapes and settings (with
    ``reads`` from :func:`module_reads`, only the settings that the forward reads)."""
    out = []
    for name, m in model.named_modules():
        params = tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in m.named_parameters(recurse=False))
        buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in m.named_buffers(recurse=False))
        read = None if reads is None else reads.get(name, set())
        out.append((name, type(m).__qualname__, params, buffers, _settings(m, read)))
    return tuple(out)


def module_reads(model: nn.Module, sample: torch.Tensor) -> dict | None:
    """Per module name, the instance attributes that a training forward (with gradients) and an
    evaluation forward (without) of a copy of ``model`` on ``sample`` read; None when the model
    cannot be probed (then every setting counts).

    A population runs one copy of member 0's modules for every member, so members must agree in
    every plain attribute the forward reads (``self.scale``, a flag choosing a branch); attributes
    it never reads (a hyper-parameter kept on the model, ``self.l2 = l2``) need not agree, and
    members differing only there share one population. Reads are recorded through each module's
    ``__getattribute__`` during the two forwards only; the global random state is left as it was.
    """
    try:
        probe = copy.deepcopy(model)
    except Exception:   # noqa: BLE001 - a model that cannot be copied keeps the strict signature
        return None
    reads = {id(m): set() for m in probe.modules()}
    recording, classes = [False], {}

    def recorder(cls):
        if cls not in classes:
            def __getattribute__(self, key):
                if recording[0] and key in object.__getattribute__(self, "__dict__"):
                    reads[id(self)].add(key)
                return cls.__getattribute__(self, key)
            classes[cls] = type(cls.__name__, (cls,), {"__getattribute__": __getattribute__,
                                                        "__module__": cls.__module__})
        return classes[cls]

    device = sample.device
    try:
        for m in probe.modules():
            m.__class__ = recorder(type(m))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for training in (True, False):
                probe.train(training)
                with torch.set_grad_enabled(training):
                    recording[0] = True
                    try:
                        probe(sample)
                    finally:
                        recording[0] = False
    except Exception:   # noqa: BLE001 - training reports the model's own error; here: strict grouping
        return None
    return {name: reads[id(m)] for name, m in probe.named_modules()}


def _slots(base: nn.Module, param_names: list, buffer_names: list) -> list | None:
    """Where each named parameter and buffer of ``base`` lives: ``(module._parameters or
    module._buffers, name)``, in the order of the names; None when some tensor is shared under two
    names (tied weights: ``functional_call`` unties them)."""
    every = (list(base.named_parameters(remove_duplicate=False)), list(base.named_buffers(remove_duplicate=False)))
    if [n for n, _ in every[0]] != list(param_names) or [n for n, _ in every[1]] != list(buffer_names):
        return None
    out = []
    for names, attr in ((param_names, "_parameters"), (buffer_names, "_buffers")):
        for name in names:
            owner, _, key = name.rpartition(".")
            out.append((getattr(base.get_submodule(owner), attr), key))
    return out


def _strip(module: nn.Module) -> None:
    """Remove reglab's hooks and registries from the base copy (they belong to the members)."""
    for m in module.modules():
        reg = registry(m)
        if reg is not None and reg.hook is not None:
            m._forward_hooks.pop(reg.hook.id, None)
        if "_reglab" in vars(m):
            del m._reglab


class ModulePopulation(MergedRules):
    """P members of one architecture (any ``nn.Module``), stacked and run under ``vmap``.

    Same interface as the Sequential :class:`~reglab.population.engine.Population`: ``params``
    (the stacked trainable tensors the optimizer updates), ``forward(x, ctx)``, ``weight_penalty()``,
    ``apply_constraints(active)`` and ``write_back()``; plus ``buffers``.
    """

    fused = None

    def __init__(self, models: list[nn.Module], reads: dict | None = None):
        first = signature(models[0], reads)
        for i, m in enumerate(models[1:], 1):
            if signature(m, reads) != first:
                raise ValueError(f"Member {i} does not share member 0's architecture (module tree, shapes and settings); "
                                 "members of one population must.")
        self.models, self.P = models, len(models)
        self.base = copy.deepcopy(models[0])
        _strip(self.base)
        named = [dict(m.named_parameters()) for m in models]
        self.param_names = list(named[0])
        # The stacked parameters are consecutive views of one flat tensor, so that the optimizer can
        # update them all in one pass (Optimizer.use_flat).
        self.flat, self.params = flat_parameters([torch.stack([n[k].detach() for n in named]) for k in self.param_names])
        for k, p in zip(self.param_names, self.params):   # a frozen weight stays frozen, as reglab.fit leaves it
            p.requires_grad_(named[0][k].requires_grad)
        bufs = [dict(m.named_buffers()) for m in models]
        self.buffer_names = list(bufs[0])
        self.buffers = [torch.stack([b[k] for b in bufs]).clone() for k in self.buffer_names]
        self._slots = _slots(self.base, self.param_names, self.buffer_names)
        self._rules(models)
        # Random layers and recurrent layers of the base run through reglab's versions.
        self.site_modules = {}
        for name, m in self.base.named_modules():
            kind = site_kind(m)
            if kind is not None and issubclass(kind, RandomLayer):
                self.site_modules[name] = _Site(kind, name, None, members=[mm.get_submodule(name) for mm in models])
                m.forward = self._site_forward(m, name)
            elif kind is not None:
                per_member = [float(getattr(dict(mm.named_modules())[name], RATE_ATTR.get(kind, "p"))) for mm in models]
                self.site_modules[name] = _Site(kind, name, per_member)
                m.forward = self._site_forward(m, name)
            elif isinstance(m, nn.RNNBase):
                m.forward = _rnn_forward(m)
            elif type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
                m.forward = _batch_norm_forward(m)
            elif type(m) is nn.MultiheadAttention:
                m.forward = _attention_forward(m, self)
            elif type(m) is nn.Linear:
                m.forward = _linear_forward(m)
            elif type(m) is nn.Embedding and m.padding_idx is not None:
                m.forward = _embedding_forward(m)
            elif type(m) is nn.EmbeddingBag:
                m.forward = _embedding_bag_forward(m)
            elif isinstance(m, _SpectralNorm):
                m._power_method = _power_method(m)
            elif isinstance(m, _WeightNorm):
                m.forward = _weight_norm_forward(m)
        self._attention = any(isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
                              for m in self.base.modules())
        self._captured = {}
        for name in self.activity:
            self.base.get_submodule(name).register_forward_hook(self._capture(name))
        self._plans = {}
        self._checked = set()   # (shared, mode, shape, training) that ran under vmap
        self._draws = None
        self._ahead = None   # (plan, generators, their states before, future): see _take_draws
        self._training = None   # the mode the base was last put in (train() walks every submodule)
        self._cursor = 0
        self._fns = {}

    # -- rules ----------------------------------------------------------------------------------
    def _rules(self, models):
        """Penalties, constraints and activity penalties per parameter / module name, merged over members."""
        pens, cons = [{} for _ in models], [{} for _ in models]
        acts = [{} for _ in models]
        for i, model in enumerate(models):
            for prefix, module in model.named_modules():
                reg = registry(module)
                if reg is None:
                    continue
                for table, out in ((reg.penalties, pens[i]), (reg.constraints, cons[i])):
                    for name, rule in table.items():
                        out[f"{prefix}.{name}" if prefix else name] = rule
                if reg.activity is not None:
                    acts[i][prefix] = (reg.activity, reg.activity_convention, module)
        index = {n: k for k, n in enumerate(self.param_names)}
        self.penalties, self.constraints = [], []
        for name in self.param_names:
            merged = MergedPenalty([p.get(name) for p in pens])
            if merged:
                self.penalties.append((self.params[index[name]], merged))
            merged = MergedConstraint([c.get(name) for c in cons])
            if merged:
                self.constraints.append((self.params[index[name]], merged))
        self.activity = {}
        for name in dict.fromkeys(n for a in acts for n in a):
            entries = [a.get(name) for a in acts]
            mean = torch.tensor([e is None or e[1] == "mean" for e in entries])
            module = next(e[2] for e in entries if e is not None)
            rnn_time_major = isinstance(module, nn.RNNBase) and not module.batch_first
            self.activity[name] = (MergedPenalty([e[0] if e else None for e in entries]), mean, rnn_time_major)

    def _capture(self, name):
        def hook(module, inputs, output):
            self._captured[name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    # -- random sites -----------------------------------------------------------------------------
    def _site_forward(self, module, name):
        kind = site_kind(module)
        if issubclass(kind, RandomLayer):
            def transform(x):
                if not module.training:
                    return module.inference(x)
                params = self._next(name, x)
                return module.inference(x) if params is None else module.transform(x, params)   # None: probing
            return transform

        def forward(x):
            if not module.training:
                return x
            noise = self._next(name, x)
            if noise is None:
                return x
            return x + noise if kind in ADDITIVE else x * noise
        return forward

    def _next(self, name, x=None):
        if self._draws is None:   # probing: record, draw nothing
            site = self.site_modules.get(name)
            if site is not None and site.members is not None:   # a RandomLayer samples for the input's shape
                self._probe_calls.append(_Site(site.kind, name, None, tuple(x.shape), None, site.members))
            elif site is not None:
                plain = site.kind in (nn.Dropout,)   # the kinds that draw into empty_like(x)
                self._probe_calls.append(_Site(site.kind, name, site.rates, noise_shape(site.kind, tuple(x.shape)),
                                               memory_order(x) if plain else None))
            return None
        k = self._cursor
        self._cursor += 1
        plan = self._plan_now
        if k >= len(plan) or plan[k].name != name:
            raise NotBatchable("The model's random layers ran in a different order than when it was probed "
                               "(control flow that depends on the data?); train it with reglab.fit.")
        slot = self._slot[k]
        return None if slot is None else self._draws[slot]

    def _plan(self, sample: torch.Tensor, training: bool):
        """The random sites a forward on inputs shaped like ``sample`` (one member's batch) calls."""
        key = (tuple(sample.shape), sample.dtype, training)
        if key not in self._plans:
            self._mode(training)
            self._probe_calls = []
            probe = _Sites(self, probing=True)
            buffers = {n: b[0].clone() for n, b in zip(self.buffer_names, self.buffers)}
            params = {n: p[0].detach() for n, p in zip(self.param_names, self.params)}
            with torch.no_grad(), probe:
                torch.func.functional_call(self.base, (params, buffers), (sample,))
            # Layer sites are recorded by _next, function sites by the probe mode: one list in call order.
            self._plans[key] = (list(self._probe_calls), probe.found or self._attention)
        return self._plans[key]

    def _draw_all(self, plan, generators, device, parallel=True):
        """Each member's tensors for every site, drawn from its own generator in call order, as
        :func:`draw` draws them, straight into one (P, ...) tensor per site.

        A member's generator is only ever used by one thread, which draws that member's sites in
        call order, so the values do not depend on how members are spread over threads; on the
        CPU they are spread over ``torch.get_num_threads()`` threads (PyTorch's CPU draws are
        serial kernels that release the GIL)."""
        dtype = self.params[0].dtype
        jobs, draws, slots = [], [], []   # jobs: (index in draws, site, kind, rates); kind None: a RandomLayer
        for site in plan:
            if site.members is not None:   # each member's own RandomLayer samples from its generator
                slots.append(len(draws))
                jobs.append((len(draws), site, None, None))
                draws.append([None] * self.P)
                continue
            layer = isinstance(site.kind, type)
            kind = site.kind if layer else nn.Dropout
            rates = site.rates if layer else site.rates * self.P
            if all(r == 0 for r in rates):
                slots.append(None)
                continue
            order = site.order if site.order is not None else tuple(range(len(site.shape)))
            slots.append(len(draws))
            jobs.append((len(draws), site, kind, rates))
            draws.append(torch.empty((self.P,) + tuple(site.shape[d] for d in order), dtype=dtype, device=device))

        # Member i's dropout mask keeps an element where its draw is below the threshold of 1 - rate,
        # as 1 / (1 - rate) in the mask's dtype (bernoulli_ then div_(1 - rate)), written by the draw.
        masks = {k: _mask_constants(tuple(rates), dtype) for k, site, kind, rates in jobs
                 if kind is not None and kind not in (GaussianNoise, GaussianDropout)}
        arrays = {k: draws[k].view(self.P, -1).numpy() for k in masks} if bernoulli.usable(device, dtype) else None

        def fill(members):
            for i in members:
                gen, twister = generators[i], None   # consecutive masks: one read and write of the state
                for k, site, kind, rates in jobs:
                    out = draws[k]
                    if k in masks and 0 < rates[i] < 1:
                        limit, value = masks[k][0][i], masks[k][1][i]
                        if arrays is None:
                            bernoulli.masks([(out[i], 1 - rates[i], value)], gen)
                        else:
                            twister = twister or bernoulli.Twister(gen)
                            twister.fill(arrays[k][i], limit, value)
                        continue
                    if twister is not None:
                        twister.close()
                        twister = None
                    if kind is None:
                        out[i] = site.members[i].sample(site.shape, dtype, device, gen)
                    elif rates[i] == 0:
                        out[i].fill_(0.0 if kind in (GaussianNoise, GaussianDropout) else 1.0)
                    elif kind in (GaussianNoise, GaussianDropout):
                        out[i].normal_(generator=gen)
                    else:   # rate 1: all dropped, nothing drawn (as torch)
                        out[i].zero_()
                if twister is not None:
                    twister.close()

        workers = min(self.P, torch.get_num_threads()) if device.type == "cpu" and jobs and parallel else 1
        if workers > 1:
            parts = [range(k * self.P // workers, (k + 1) * self.P // workers) for k in range(workers)]
            list(_pool(os.cpu_count() or 1).map(fill, parts))
        else:
            fill(range(self.P))
        for k, site, kind, rates in jobs:
            out = draws[k]
            if kind is None:
                draws[k] = torch.stack(out)
                continue
            member = (-1,) + (1,) * len(site.shape)
            if kind is GaussianNoise:
                out.mul_(torch.tensor(rates, dtype=dtype, device=device).view(member))
            elif kind is GaussianDropout:
                std = [(r / (1.0 - r)) ** 0.5 for r in rates]
                out.mul_(torch.tensor(std, dtype=dtype, device=device).view(member)).add_(1.0)
            if site.order is not None:
                order = site.order
                draws[k] = out.permute((0,) + tuple(order.index(d) + 1 for d in range(len(order))))
        return draws, slots

    def _take_draws(self, plan, generators, device):
        """This training forward's draws (:meth:`_draw_all`), and the next one's started.

        On the CPU, the next forward's draws are made in a background thread while this one
        computes, on the guess that it will be shaped like this one (every batch but an epoch's
        last), when they are large enough to pay for the hand-over (:data:`AHEAD_MIN`). The
        generators' states are kept before drawing ahead; when the guess is wrong they are put
        back and the draws made afresh, so the values are what drawing in turn gives."""
        ahead, self._ahead, out = self._ahead, None, None
        if ahead is not None:
            want, gens, saved, future = ahead
            drawn = future.result()
            if want is plan and gens is generators:
                out = drawn
            else:
                for g, state in zip(gens, saved):
                    g.set_state(state)
        if out is None:
            out = self._draw_all(plan, generators, device)
        if device.type == "cpu" and self.P * sum(math.prod(site.shape) for site in plan) >= AHEAD_MIN:
            saved = [g.get_state() for g in generators]
            self._ahead = (plan, generators, saved, _pool(1).submit(self._draw_all, plan, generators, device, False))
        return out

    def settle(self) -> None:
        """Undo any draws made ahead (training is over): each generator as if they were never made."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[3].result()
            for g, state in zip(ahead[1], ahead[2]):
                g.set_state(state)

    # -- forward ----------------------------------------------------------------------------------
    def _mode(self, training: bool) -> None:
        """The base in training or eval mode (only the base's own modules: members' models untouched)."""
        training = bool(training)
        if self._training != training:
            self.base.train(training)
            self._training = training

    def forward(self, x: torch.Tensor, ctx, shared: bool = False):
        """Outputs (P, B, ...) and each member's activity penalty (P,). ``x`` is (P, B, ...), or
        (B, ...) with ``shared=True`` (every member sees the same batch)."""
        plan, uses_mode = self._plan(x if shared else x[0], ctx.training)
        draws, slots = self._take_draws(plan, ctx.noise_generators, x.device) if ctx.training else ([], [None] * len(plan))
        self._mode(ctx.training)
        key = (shared, uses_mode)
        if key not in self._fns:
            self._fns[key] = torch.func.vmap(self._member_fn(uses_mode), in_dims=(0, 0, None if shared else 0, 0),
                                             randomness="error")
        self._draws, self._slot, self._plan_now, self._cursor = draws, slots, plan, 0
        checked = key + (tuple(x.shape), ctx.training)
        try:
            if self.P == 1 and checked in self._checked:
                # One member runs as the plain model (vmap's per-op cost buys nothing): the same
                # arithmetic, once the first call of this kind has shown under vmap that it batches.
                out, acts = self._member_fn(uses_mode)([p[0] for p in self.params], [b[0] for b in self.buffers],
                                                       x if shared else x[0], [d[0] for d in draws])
                out = out.unsqueeze(0)
                acts = [a.unsqueeze(0) for a in acts]
            else:
                out, acts = self._fns[key](self.params, self.buffers, x, draws)
                self._checked.add(checked)
        except RuntimeError as exc:
            raise _explain(exc, self.base) from None
        finally:
            self._draws = None
            self._captured.clear()
        total = None
        for (name, (merged, mean, time_major)), value in zip(self.activity.items(), acts):
            pen = merged.members(value)
            if pen is None:   # a zero penalty (Keras's ActivityRegularization() defaults): nothing to add
                continue
            batch = value.shape[2 if time_major and value.dim() == 4 else 1]
            pen = torch.where(mean.to(pen.device), pen / batch, pen)
            total = pen if total is None else total + pen
        if total is None:
            total = self.params[0].new_zeros(self.P)
        return out, total

    def _member_fn(self, uses_mode):
        base, pnames, bnames, slots = self.base, self.param_names, self.buffer_names, self._slots

        def call(params, buffers, x):
            if slots is None:
                state = dict(zip(pnames, params))
                state.update(zip(bnames, buffers))
                return torch.func.functional_call(base, state, (x,))
            # functional_call's swap, without its per-call name lookups: the member's tensors go
            # into the base's parameter and buffer slots for this call, the base's own come back after
            tensors = list(params) + list(buffers)
            saved = [table[key] for table, key in slots]
            try:
                for (table, key), t in zip(slots, tensors):
                    table[key] = t
                return base(x)
            finally:
                for (table, key), t in zip(slots, saved):
                    table[key] = t

        def member(params, buffers, x, draws):
            self._draws = draws
            if uses_mode:
                with _Sites(self, probing=False):
                    out = call(params, buffers, x)
            else:
                out = call(params, buffers, x)
            acts = [self._captured.pop(name, None) for name in self.activity]
            acts = [a if a is not None else out.new_zeros(()) for a in acts]
            return out, acts
        return member

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy each member's stacked parameters and buffers into its own model."""
        for i, model in enumerate(self.models):
            params, bufs = dict(model.named_parameters()), dict(model.named_buffers())
            for name, stacked in zip(self.param_names, self.params):
                params[name].copy_(stacked[i])
            for name, stacked in zip(self.buffer_names, self.buffers):
                bufs[name].copy_(stacked[i])
            model.eval()


def _explain(exc: RuntimeError, model: nn.Module) -> Exception:
    text = str(exc)
    first = (text.splitlines() or [type(exc).__name__])[0]
    if "randomness" in text or "random operation" in text:
        return NotBatchable(f"{type(model).__name__} draws random numbers in forward() outside the layers reglab draws per "
                            "member (nn.Dropout*, F.dropout, attention dropout, reglab.GaussianNoise/GaussianDropout, "
                            "reglab's augmentation layers, DropPath, AlphaDropout); "
                            "use those layers, or train the model with reglab.fit.")
    if "Batching rule not implemented" in text:
        return NotBatchable(f"{type(model).__name__} cannot run as a population under torch.func.vmap ({first}); "
                            "forward() uses an operation that vmap cannot batch (out= and some in-place forms): "
                            "write it another way, or train the model with reglab.fit.")
    if "vmap" in text or "Batching rule" in text or "data-dependent" in text or ".item()" in text:
        return NotBatchable(f"{type(model).__name__} cannot run as a population under torch.func.vmap ({first}); "
                            "avoid data-dependent Python control flow and .item() in forward(), or train it with reglab.fit.")
    return exc
