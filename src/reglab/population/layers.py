"""Population versions of ``torch.nn`` layers: parameters stacked with a leading member dim (P, ...).

Activations flow as (P, B, ...). Each class is built from the P member modules at one position of
the members' ``nn.Sequential`` and reproduces that module's forward pass for every member at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ChannelsFirst, GaussianDropout, GaussianNoise, SequenceDropout
from .functional import _linear, draw

# Parameter-free, deterministic modules. The element-wise ones are applied to (P, B, ...) as it is
# (no reshape, nor its autograd node); the others treat dim 0 as the batch: applied to (P*B, ...).
ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Tanhshrink,
    nn.LogSigmoid, nn.Identity,
)
STATELESS = ELEMENTWISE + (
    nn.Flatten, ChannelsFirst, nn.Softmax,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
RANDOM = (nn.Dropout, GaussianNoise, GaussianDropout)
SUPPORTED = STATELESS + RANDOM + (nn.Linear, nn.Conv1d, nn.Conv2d)


def stack(modules, name):
    return torch.stack([m.get_parameter(name).detach() for m in modules]).clone().requires_grad_(True)


class PopLayer:
    """One position of the members' Sequential. ``params`` maps parameter names to stacked tensors."""

    random = False

    def __init__(self, modules):
        self.module = modules[0]
        self.params: dict[str, torch.Tensor] = {}

    def forward(self, x, ctx):  # pragma: no cover - abstract
        raise NotImplementedError


class Stateless(PopLayer):
    def __init__(self, modules):
        super().__init__(modules)
        # An in-place one keeps the reshape: an expanded input (one batch shared by every member) can
        # only be written as a copy.
        self.as_is = isinstance(self.module, ELEMENTWISE) and not getattr(self.module, "inplace", False)

    def forward(self, x, ctx):
        if self.as_is:
            return self.module(x)
        P, B = x.shape[:2]
        return self.module(x.reshape((P * B,) + x.shape[2:])).unflatten(0, (P, B))


class _StackedLinear(torch.autograd.Function):
    """``x Wᵢᵀ + bᵢ`` for every member i at once: x (P, N, in), W (P, out, in), b (P, out) or None.

    The backward pass is written out so that every gradient comes out contiguous, in its tensor's
    own layout, as the optimizer's flat pass reads it in place. Autograd's rule for
    ``bmm(x, W.mT)`` gives W's gradient as the transpose of a (P, in, out) product, which the pass
    must gather (the tabular MLP's update, Intel Xeon: 0.88 against 0.44 ms); ``(W xᵀ)ᵀ`` instead hands every
    following layer a transposed activation to copy. The products are nn.Linear's for each member:
    ``gᵀ x``, ``g W`` and ``g`` summed over rows.
    """

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return _linear(x, w, b)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        gx = torch.bmm(g, w) if need_x else None
        gw = torch.bmm(g.transpose(1, 2), x) if need_w else None
        gb = g.sum(1) if need_b else None   # False without a bias
        return gx, gw, gb


class Linear(PopLayer):
    def __init__(self, modules):
        super().__init__(modules)
        self.params["weight"] = stack(modules, "weight")
        if modules[0].bias is not None:
            self.params["bias"] = stack(modules, "bias")

    def forward(self, x, ctx):
        w, b = self.params["weight"], self.params.get("bias")
        shape = x.shape
        out = _StackedLinear.apply(x.reshape(shape[0], -1, shape[-1]), w, b)
        return out.view(shape[:-1] + (w.shape[1],))


# Largest patch matrix per member for which a Conv2d runs as im2col + bmm (it is kept for backward,
# C*kh*kw times the input); larger ones (deep or large images) run as a vmapped convolution.
IM2COL_BYTES = 4 << 20


class Conv(PopLayer):
    def __init__(self, modules):
        super().__init__(modules)
        m = modules[0]
        if m.padding_mode != "zeros":
            raise ValueError(f"{type(m).__name__}(padding_mode={m.padding_mode!r}) is not supported in a population; use padding_mode='zeros'.")
        self.params["weight"] = stack(modules, "weight")
        if m.bias is not None:
            self.params["bias"] = stack(modules, "bias")
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        self.fn = torch.func.vmap(lambda x, w, b: conv(x, w, b, m.stride, m.padding, m.dilation, m.groups))
        self.fn_nobias = torch.func.vmap(lambda x, w: conv(x, w, None, m.stride, m.padding, m.dilation, m.groups))
        # Conv2d without groups or string padding runs as one im2col + bmm per population (below).
        self.im2col = isinstance(m, nn.Conv2d) and m.groups == 1 and not isinstance(m.padding, str)

    def forward(self, x, ctx):
        if self.im2col and self._cols_bytes(x) <= IM2COL_BYTES:
            return self._im2col(x)
        if "bias" in self.params:
            return self.fn(x, self.params["weight"], self.params["bias"])
        return self.fn_nobias(x, self.params["weight"])

    def _cols_bytes(self, x) -> int:
        """Bytes per member of the patch matrix that _im2col keeps for the backward pass."""
        m = self.module
        (sh, sw), (ph, pw), (dh, dw) = m.stride, m.padding, m.dilation
        C, H, W = x.shape[2:]
        kh, kw = m.kernel_size
        Ho, Wo = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return C * kh * kw * x.shape[1] * Ho * Wo * x.element_size()

    def _im2col(self, x):
        """Conv2d for all members as one batched matmul.

        The patches are gathered by k_h * k_w strided slices into (P, C*k_h*k_w, B*H'*W') and
        multiplied by each member's (O, C*k_h*k_w) kernel. The output (P, B, O, H', W') is returned
        in channels-last memory order, which lets the pooling and activation layers after it run
        their fast channels-last kernels on the merged (P*B, O, H', W') batch; Flatten copies it
        back to PyTorch's (O, H', W') order, so values are laid out exactly as in the member's model.
        """
        m, w, b = self.module, self.params["weight"], self.params.get("bias")
        (sh, sw), (ph, pw), (dh, dw) = m.stride, m.padding, m.dilation
        P, B, C, H, W = x.shape
        O, _, kh, kw = w.shape[1:]
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
            H, W = H + 2 * ph, W + 2 * pw
        Ho, Wo = (H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1
        xt = x.transpose(1, 2)                                                  # (P, C, B, H, W) view
        cols = torch.stack([xt[..., u * dh:u * dh + (Ho - 1) * sh + 1:sh, v * dw:v * dw + (Wo - 1) * sw + 1:sw]
                            for u in range(kh) for v in range(kw)], 2)         # (P, C, kh*kw, B, Ho, Wo)
        cols = cols.reshape(P, C * kh * kw, B * Ho * Wo).transpose(1, 2)       # (P, B*Ho*Wo, C*kh*kw)
        kernel = w.reshape(P, O, C * kh * kw).transpose(1, 2)
        out = torch.bmm(cols, kernel) if b is None else torch.baddbmm(b.unsqueeze(1), cols, kernel)
        return out.view(P, B, Ho, Wo, O).permute(0, 1, 4, 2, 3)


class Random(PopLayer):
    """Dropout / GaussianNoise / GaussianDropout with one rate per member and per-member streams.

    Each member draws exactly what the standalone module would draw from a generator in the same
    state (``empty_like(x).bernoulli_(1 - p)`` for dropout, ``randn`` for noise), so a member's masks
    equal its standalone fit's masks.
    """

    random = True

    def __init__(self, modules):
        super().__init__(modules)
        attr = "p" if isinstance(modules[0], nn.Dropout) else ("stddev" if isinstance(modules[0], GaussianNoise) else "rate")
        self.rates = [float(getattr(m, attr)) for m in modules]
        self.kind = type(modules[0])

    def forward(self, x, ctx):
        if not ctx.training:
            return x
        shape, dtype = x.shape[1:], x.dtype
        if issubclass(self.kind, SequenceDropout):
            shape = self.module.noise_shape(shape)
        kind = next(k for k in (GaussianNoise, GaussianDropout, nn.Dropout) if issubclass(self.kind, k))
        draws = [draw(kind, rate, shape, dtype, gen, device=x.device) for rate, gen in zip(self.rates, ctx.noise_generators)]
        if all(d is None for d in draws):
            return x
        neutral = torch.zeros if issubclass(self.kind, GaussianNoise) else torch.ones
        noise = torch.stack([neutral(shape, dtype=dtype, device=x.device) if d is None else d for d in draws])
        return x + noise if issubclass(self.kind, GaussianNoise) else x * noise


def make(modules):
    m = modules[0]
    if isinstance(m, nn.Linear):
        return Linear(modules)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return Conv(modules)
    if isinstance(m, RANDOM):
        return Random(modules)
    if isinstance(m, STATELESS):
        return Stateless(modules)
    raise ValueError(f"{type(m).__name__} is not supported in a population (supported: Linear, Conv1d, Conv2d, "
                     "pooling, Flatten, activations, Dropout, reglab noise layers); "
                     "train this model with reglab.fit.")
