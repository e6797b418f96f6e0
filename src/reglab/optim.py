"""Keras 3's optimizers, element-wise, for single models and stacked populations alike.

Every update is element-wise, so one optimizer over tensors stacked with a leading member
dimension is P independent optimizers. ``lr`` may be a 1-D tensor with one learning rate per
member, and :meth:`Optimizer.step` takes an optional ``active`` mask that freezes members.

Weight decay is *decoupled* (AdamW, and Keras 3's ``weight_decay`` on every optimizer):
``w -= lr * weight_decay * w`` before the update, independent of the gradient. An L2 penalty
instead adds ``2 * l2 * w`` to the gradient, which Adam then rescales per weight, so the two only
coincide for plain SGD (with ``weight_decay = 2 * l2``).

>>> import torch
>>> w = torch.nn.Parameter(torch.tensor([1.0]))
>>> opt = Adam([w], lr=0.1)
>>> w.grad = torch.tensor([0.5])
>>> opt.step()
>>> round(w.item(), 4)   # first Adam step moves by lr * m / (sqrt(v) + eps) ≈ lr
0.9
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

try:  # one fused pass per tensor instead of seven; the torch code below stays the reference
    import numba as _nb
    from numba.extending import intrinsic as _intrinsic
except ImportError:  # pragma: no cover
    _nb = None

if _nb is not None:
    # Adam's moment and weight updates, element by element, for both compiled kernels (this module's
    # and the fused MLP kernel's): Adam._update's torch formulas, float32, in their order.
    @_nb.njit(inline="always")
    def adam_moments(g, gg, m, v, w1, w2):  # pragma: no cover - compiled
        """m ← m + (1-β1)(g - m), v ← v + (1-β2)(g² - v) (``gg``: g², or 0 where flushed)."""
        return m + w1 * (g - m), v + w2 * (gg - v)

    @_nb.njit(inline="always")
    def adam_weight(w, m, v, step, inv_bc2_sqrt, eps):  # pragma: no cover - compiled
        """w + step · m / (√v · inv + ε): Keras's ε-hat placement (inv = 1), or torch's (inv = 1/√(1-β2^t))."""
        return w + step * m / (np.sqrt(v) * inv_bc2_sqrt + eps)

    @_nb.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
    def _adam_kernel(p, g, m, v, l1, l2, w1, w2, step, eps, inv_bc2_sqrt):  # pragma: no cover - compiled
        # Adam (Adam._update's formulas, float32) on rows k of p, g, m, v (members × n, or one row),
        # the gradient first plus row k's L1/L2 penalty gradient when l1/l2 are not empty
        # (penalty_gradient's formula and order): sign(w)·l1[k] + g, then w·l2[k] + that.
        has_l1, has_l2 = l1.size > 0, l2.size > 0
        for k in range(p.shape[0]):
            c1 = l1[k] if has_l1 else np.float32(0.0)
            c2 = l2[k] if has_l2 else np.float32(0.0)
            for i in _nb.prange(p.shape[1]):
                w = p[k, i]
                gi = g[k, i]
                if has_l1:
                    gi = np.sign(w) * c1 + gi
                if has_l2:
                    gi = w * c2 + gi
                mi, vi = adam_moments(gi, gi * gi, m[k, i], v[k, i], w1, w2)
                m[k, i] = mi
                v[k, i] = vi
                p[k, i] = adam_weight(w, mi, vi, step, inv_bc2_sqrt, eps)

    @_nb.njit(inline="always")
    def _adam_run(p, g, m, v, c1, c2, has_l1, has_l2, w1, w2, step, eps, inv_bc2_sqrt):  # pragma: no cover - compiled
        for i in range(p.shape[0]):
            w = p[i]
            gi = g[i]
            if has_l1:
                gi = np.sign(w) * c1 + gi
            if has_l2:
                gi = w * c2 + gi
            mi, vi = adam_moments(gi, gi * gi, m[i], v[i], w1, w2)
            m[i] = mi
            v[i] = vi
            p[i] = adam_weight(w, mi, vi, step, inv_bc2_sqrt, eps)

    @_intrinsic
    def _float32_at(typingctx, address):  # pragma: no cover - compiled
        """The float32 array that starts at ``address`` (an int64: a tensor's data_ptr()), as a
        pointer for ``numba.carray``: each gradient is read where autograd left it, without the
        per-call cost of passing a list of arrays (a numba typed List costs ~20 µs an element)."""
        pointer = _nb.types.CPointer(_nb.types.float32)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(pointer))
        return pointer(_nb.types.int64), codegen

    TILE = 16   # rows of a transposed gradient gathered together: one 64-byte cache line of each column

    @_nb.njit(inline="always")
    def _gather_transposed(out, g, e, O, I):  # pragma: no cover - compiled
        # out[x] = element e + x, in row-major order, of a tensor (..., O, I) whose memory g holds each
        # (O, I) matrix transposed, as a contiguous (I, O) one. Whole runs of TILE rows are read
        # column by column (TILE consecutive floats of g each), so every cache line of g is read once;
        # a row at a block's edges, one by one. A plain strided read is several times slower: a
        # 256-wide matrix puts consecutive reads 1 KiB apart, where they share a few cache sets.
        n, x, OI = out.shape[0], 0, O * I
        while x < n:
            base = e - e % OI
            o = (e - base) // I
            i0 = e - base - o * I
            if i0 == 0 and o + TILE <= O and x + TILE * I <= n:
                for i in range(I):
                    src = base + i * O + o
                    for r in range(TILE):
                        out[x + r * I + i] = g[src + r]
                step = TILE * I
            else:
                step = min(I - i0, n - x)
                for c in range(step):
                    out[x + c] = g[base + (i0 + c) * O + o]
            x += step
            e += step

    @_nb.njit(inline="always")
    def _adam_block(k, p, grads, m, v, starts, stops, which, offsets, l1, l2, has, layout, w1, w2, step, eps,
                    inv_bc2_sqrt):  # pragma: no cover - compiled
        # _adam_kernel's element update on block k of the flat p, m, v: p[starts[k]:stops[k]], part of
        # one member's row of one stacked tensor (parameter which[k], from its element offsets[k]),
        # whose penalty gradient (has[k]: bit 1 L1, bit 2 L2) uses that member's l1[k], l2[k]. The
        # gradient is read where autograd left it, at address grads[which[k]], in one of two layouts
        # (layout[which[k]] = (O, I, numel)): O = 0, contiguous like the parameter, read in place; else
        # each (O, I) matrix of the last two dims stored transposed (autograd's gradient of a weight
        # used as ``x @ w.mT``), gathered into a block-sized buffer first.
        a, b = starts[k], stops[k]
        j = which[k]
        if layout[j, 0] == 0:
            g = _nb.carray(_float32_at(grads[j] + 4 * offsets[k]), b - a)
        else:
            g = np.empty(b - a, np.float32)
            _gather_transposed(g, _nb.carray(_float32_at(grads[j]), layout[j, 2]), offsets[k], layout[j, 0],
                               layout[j, 1])
        _adam_run(p[a:b], g, m[a:b], v[a:b], l1[k], l2[k], (has[k] & 1) != 0, (has[k] & 2) != 0,
                  w1, w2, step, eps, inv_bc2_sqrt)

    # The blocks over threads for large populations, in turn below PARALLEL_MIN elements, where
    # waking the threads costs more than it saves (Intel Xeon, 2 vCPUs: 10-member populations of 350k
    # elements 0.21 vs 0.32 ms a step, of 683k 0.39 vs 0.60 ms; of 16k 0.046 vs 0.022 ms; break-even
    # near 50k). Each element's update is the same either way: the same bits.
    @_nb.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
    def _adam_blocks(p, grads, m, v, starts, stops, which, offsets, l1, l2, has, layout, w1, w2, step, eps,
                     inv_bc2_sqrt):  # pragma: no cover - compiled
        for k in _nb.prange(starts.shape[0]):
            _adam_block(k, p, grads, m, v, starts, stops, which, offsets, l1, l2, has, layout, w1, w2, step, eps,
                        inv_bc2_sqrt)

    @_nb.njit(cache=True, nogil=True, error_model="numpy")
    def _adam_blocks_serial(p, grads, m, v, starts, stops, which, offsets, l1, l2, has, layout, w1, w2, step, eps,
                            inv_bc2_sqrt):  # pragma: no cover - compiled
        for k in range(starts.shape[0]):
            _adam_block(k, p, grads, m, v, starts, stops, which, offsets, l1, l2, has, layout, w1, w2, step, eps,
                        inv_bc2_sqrt)

PARALLEL_MIN = 1 << 16   # elements of a flat update run over threads from this size on
BLOCK = 1 << 14          # elements of one block of the flat update (a row is split into blocks)

from ._validate import check_choice, check_coefficient, check_number



class Clipping:
    """Keras's gradient clipping, applied before weight decay and the update (at most one kind):

    - ``clipnorm``: each weight's gradient ``g * c / max(||g||, c)`` (its own L2 norm);
    - ``global_clipnorm``: all gradients scaled by ``c / max(||all||, c)``;
    - ``clipvalue``: every element clipped to ``[-c, c]``.

    In a population the norms are each member's own (over a stacked tensor's non-member dimensions),
    so a member is clipped exactly as its standalone fit.
    """

    def __init__(self, clipnorm=None, clipvalue=None, global_clipnorm=None, owner="optimizer"):
        given = {k: v for k, v in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                                   ("global_clipnorm", global_clipnorm)) if v is not None}
        if len(given) > 1:
            raise ValueError(f"{owner} takes only one of clipnorm, clipvalue and global_clipnorm (as Keras); "
                             f"got {', '.join(given)}.")
        self.kind, self.value = next(iter(given.items()), (None, None))
        if self.kind is not None:
            self.value = check_number(self.value, self.kind, owner, low=0, low_open=True)

    def __bool__(self):
        return self.kind is not None

    def __call__(self, grads, stacked: bool):
        c = self.value
        if self.kind == "clipvalue":
            return [None if g is None else g.clamp(-c, c) for g in grads]

        def norms(g):   # squared L2 norm per member (stacked) or of the whole tensor, broadcastable
            dims = tuple(range(1, g.dim())) if stacked and g.dim() > 0 else tuple(range(g.dim()))
            return g.square().sum(dims, keepdim=True) if dims else g.square()

        def scaled(g, sq):   # Keras's clip_by_norm: g * c / max(norm, c), a zero gradient stays zero
            norm = torch.where(sq > 0, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), sq)
            return g * c / torch.clamp(norm, min=c)

        if self.kind == "clipnorm":
            return [None if g is None else scaled(g, norms(g)) for g in grads]
        present = [g for g in grads if g is not None]
        if stacked:
            total = sum(norms(g).reshape(-1) for g in present)
            return [None if g is None else scaled(g, total.view((-1,) + (1,) * (g.dim() - 1))) for g in grads]
        total = sum(g.square().sum() for g in present)
        return [None if g is None else scaled(g, total) for g in grads]


def flat_parameters(tensors: list) -> tuple[torch.Tensor, list]:
    """One flat tensor holding ``tensors`` one after another, and each of them as a view of it that
    is a leaf requiring grad: the parameters :meth:`Optimizer.use_flat` updates in one pass."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors]) if tensors else torch.zeros(0)
    views, offset = [], 0
    for t in tensors:
        views.append(flat[offset:offset + t.numel()].view(t.shape).requires_grad_(True))
        offset += t.numel()
    return flat, views


def _member_rows(p: torch.Tensor) -> int:
    """The rows of a stacked parameter (one per member: its leading dim), or 1 for a scalar or empty one."""
    return p.shape[0] if p.dim() > 0 and p.shape[0] > 0 else 1


def penalty_gradient(g, w: torch.Tensor, l1: torch.Tensor | None, l2: torch.Tensor | None):
    """``g`` plus the gradient of each member's L1/L2 penalty, for stacked weights ``w`` (P, ...):
    ``sign(w)·l1 + g``, then ``w·l2 + that``, with ``l1`` (P,) the L1 coefficient and ``l2`` (P,)
    twice the L2 coefficient (both times autograd's upstream gradient), or None. These are the
    numbers autograd gives for ``l1·sum|w| + l2/2·sum w²`` (``c·(2w)`` is ``w·(2c)`` to the bit);
    ``g`` None is a weight with no data gradient. Adam's numba kernel computes the same inline."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    if l1 is not None:
        extra = w.sgn().mul_(l1.view(shape))
        g = extra if g is None else extra.add_(g)   # in the layout of w
    if l2 is not None:
        extra = w * l2.view(shape)
        g = extra if g is None else extra.add_(g)
    return g


class Optimizer:
    """Minimal stateful optimizer over a list of tensors (``p.grad`` or explicit gradients)."""

    fuses_penalties = False   # _update takes penalty terms and adds their gradient itself

    def __init__(self, params, lr, weight_decay=0.0, *, clipnorm=None, clipvalue=None, global_clipnorm=None):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list.")
        self.lr = check_coefficient(lr, "lr", type(self).__name__)
        self.weight_decay = check_coefficient(weight_decay, "weight_decay", type(self).__name__,
                                              allow_tensor=False)
        self.clipping = Clipping(clipnorm, clipvalue, global_clipnorm, type(self).__name__)
        self.stacked = False   # parameters carry a leading member dimension: clip each member's own norm
        self.iterations = 0
        self.state = [dict() for _ in self.params]
        self.flat, self.flat_state = None, {}

    def use_flat(self, flat: torch.Tensor) -> None:
        """Declare that the parameters are consecutive views of the 1-D ``flat`` (in order): a step
        with one learning rate and every gradient present then updates ``flat`` in one pass (the
        element-wise rules give the same numbers as tensor by tensor)."""
        if sum(p.numel() for p in self.params) != flat.numel():
            raise ValueError("use_flat: the parameters do not cover the flat tensor.")
        self.flat = flat

    def _share_state(self) -> None:
        """Make the per-parameter state views of the flat state (one memory, either path)."""
        if not self.flat_state:
            return
        offset = 0
        for p, state in zip(self.params, self.state):
            n = p.numel()
            for k, v in self.flat_state.items():
                if k not in state:
                    state[k] = v[offset:offset + n].view_as(p)
            offset += n

    def _penalized(self, grads: list, penalties: list | None, fuse: bool) -> tuple[list, list]:
        """The gradients with the penalty terms of :meth:`step` added (:func:`penalty_gradient`),
        and per parameter the one ``(l1, l2)`` left for ``_update`` to add in its pass (``fuse``)."""
        left = [None] * len(self.params)
        for i, (p, pens) in enumerate(zip(self.params, penalties or ())):
            if pens is None:
                continue
            if fuse and grads[i] is not None and len(pens) == 1:
                left[i] = pens[0]
                continue
            for pen in pens:
                grads[i] = penalty_gradient(grads[i], p.detach(), *pen)
        return grads, left

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def _member_view(self, value, p):
        """A per-member value (P,) shaped to broadcast against a stacked parameter."""
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            return value.to(device=p.device, dtype=p.dtype).view((-1,) + (1,) * (p.dim() - 1))
        return value

    @torch.no_grad()
    def step(self, grads=None, active: torch.Tensor | None = None, penalties: list | None = None) -> None:
        """Apply one update. ``active`` (P,) bool freezes the members where it is False.
        ``penalties``: per parameter None or a list of ``(l1, l2)`` L1/L2 penalty terms whose
        gradients (:func:`penalty_gradient`, in turn) belong to the gradient (before clipping and
        the update)."""
        self.iterations += 1
        grads = [p.grad for p in self.params] if grads is None else list(grads)
        # One pass over the flat tensor when it can (Adam adds the penalty gradients in that pass).
        flat = (self.flat is not None and active is None and not isinstance(self.lr, torch.Tensor)
                and all(g is not None for g in grads) and (self.flat_state or not any(self.state)))
        fuse = self.fuses_penalties and not (self.clipping or self.weight_decay)
        if flat and fuse and self._update_flat(grads, penalties):
            return
        grads, penalties = self._penalized(grads, penalties, fuse and not flat)
        if self.clipping:
            grads = self.clipping(grads, self.stacked)
        if flat:
            flat = self.flat
            if self.weight_decay:
                flat.sub_(flat * (self.lr * self.weight_decay))
            self._update(flat, torch.cat([g.reshape(-1) for g in grads]), self.lr, self.flat_state)
            return
        self._share_state()
        for i, (p, g, pen) in enumerate(zip(self.params, grads, penalties)):
            if g is None:
                continue
            before = p.detach().clone() if active is not None else None
            lr = self._member_view(self.lr, p)
            if self.weight_decay:
                p.sub_(p * (lr * self.weight_decay))
            if pen is None:
                self._update(p, g, lr, self.state[i])
            else:
                self._update(p, g, lr, self.state[i], pen)
            if active is not None:
                keep = self._member_view(~active, p).bool() if active.dim() == 1 else ~active
                p.copy_(torch.where(keep, before, p))

    def _update(self, p, g, lr, state):  # pragma: no cover - abstract
        raise NotImplementedError

    def _update_flat(self, grads, penalties) -> bool:
        """One pass over the flat tensor adding the penalty gradients in it; False where the
        optimizer has no such pass (the caller then adds them and runs :meth:`_update`)."""
        return False

    def state_dict(self) -> dict:
        return {"iterations": self.iterations, "state": [{k: v.clone() for k, v in s.items()} for s in self.state]}


class Adam(Optimizer):
    """Keras's Adam: ``alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)``, ``w -= alpha * m / (sqrt(v) + eps)``
    with the "epsilon-hat" placement and ε = 1e-7. ``epsilon_hat=False`` gives torch.optim.Adam's
    placement: ``w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``."""

    def __init__(self, params, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0,
                 epsilon_hat=True, **clipping):
        super().__init__(params, lr, weight_decay, **clipping)
        self.beta_1 = check_number(beta_1, "beta_1", type(self).__name__, low=0, high=1, high_open=True)
        self.beta_2 = check_number(beta_2, "beta_2", type(self).__name__, low=0, high=1, high_open=True)
        self.epsilon = check_number(epsilon, "epsilon", type(self).__name__, low=0)
        self.epsilon_hat = bool(epsilon_hat)
        self._coef_cache = None   # (key, terms, arrays) of _block_coefficients

    fuses_penalties = True

    @functools.cached_property
    def _blocks(self):
        """The flat tensor as consecutive blocks of at most BLOCK elements within rows (a row: one
        member of one stacked parameter): each block's start and stop in the flat tensor, parameter,
        start within that parameter, and member."""
        table, offset = [], 0
        for i, p in enumerate(self.params):
            rows = _member_rows(p)
            size = p.numel() // rows
            for r in range(rows):
                for a in range(r * size, (r + 1) * size, BLOCK):
                    table.append((offset + a, offset + min(a + BLOCK, (r + 1) * size), i, a, r))
            offset += p.numel()
        columns = np.array(table, dtype=np.int64).reshape(-1, 5).T
        return tuple(np.ascontiguousarray(c) for c in columns)

    def _block_coefficients(self, penalties: list) -> tuple:
        """Per block of :attr:`_blocks`: its member's L1 and L2 coefficient (float32) and which of the
        two it has (bit 1 L1, bit 2 L2), from the penalty terms of :meth:`step` (one ``(l1, l2)`` per
        penalised parameter). A training passes the same terms step after step, so the arrays are
        kept until a term is another tensor or changed in place."""
        terms = [(i, j, c) for i, pens in enumerate(penalties) if pens is not None
                 for j, c in enumerate(pens[0]) if c is not None]
        key = [(i, j, id(c), c._version) for i, j, c in terms]
        if self._coef_cache is not None and self._coef_cache[0] == key:
            return self._coef_cache[2]
        _, _, params, _, rows = self._blocks
        coef = np.zeros((2, len(self.params), int(rows.max(initial=0)) + 1), dtype=np.float32)
        kinds = np.zeros(len(self.params), dtype=np.int64)
        for i, j, c in terms:
            n = _member_rows(self.params[i])
            coef[j, i, :n] = np.broadcast_to(c.detach().to(torch.float32).cpu().numpy(), (n,))
            kinds[i] |= 1 << j
        out = (coef[0][params, rows], coef[1][params, rows], kinds[params])
        self._coef_cache = (key, terms, out)   # `terms` keeps the tensors alive: their ids stay theirs
        return out

    def _update_flat(self, grads, penalties) -> bool:
        flat = self.flat
        if not (_nb is not None and flat.dtype == torch.float32 and flat.device.type == "cpu"
                and all(g.dtype == torch.float32 for g in grads)):
            return False
        if not grads:   # nothing to update
            return True
        penalties = list(penalties or [None] * len(self.params))
        if any(pens is not None and len(pens) != 1 for pens in penalties):
            return False
        l1, l2, kinds = self._block_coefficients(penalties)
        if not self.flat_state:
            self.flat_state["m"], self.flat_state["v"] = torch.zeros_like(flat), torch.zeros_like(flat)
        t = self.iterations
        bc1, bc2 = 1 - self.beta_1 ** t, 1 - self.beta_2 ** t
        f32 = np.float32
        step = -self.lr * (math.sqrt(bc2) / bc1 if self.epsilon_hat else 1 / bc1)
        # Each gradient where it is, contiguous or each matrix of its last two dims transposed (a copy
        # only of one in another layout), kept alive by `kept`.
        kept, layout = [], np.zeros((len(grads), 3), dtype=np.int64)
        for j, g in enumerate(grads):
            g = g.detach()
            if not g.is_contiguous():
                if g.dim() >= 2 and g.mT.is_contiguous():
                    layout[j] = g.shape[-2], g.shape[-1], g.numel()
                else:
                    g = g.contiguous()
            kept.append(g)
        addresses = np.fromiter((g.data_ptr() for g in kept), np.int64, len(kept))
        kernel = _adam_blocks if flat.numel() >= PARALLEL_MIN else _adam_blocks_serial
        kernel(flat.numpy(), addresses, self.flat_state["m"].numpy(), self.flat_state["v"].numpy(),
               *self._blocks[:4], l1, l2, kinds, layout,
               f32(1 - self.beta_1), f32(1 - self.beta_2), f32(step), f32(self.epsilon),
               f32(1.0 if self.epsilon_hat else 1 / math.sqrt(bc2)))
        return True

    def _update(self, p, g, lr, state, penalty=None):
        if not state:
            state["m"] = torch.zeros_like(p)
            state["v"] = torch.zeros_like(p)
        m, v = state["m"], state["v"]
        t = self.iterations
        bc1, bc2 = 1 - self.beta_1 ** t, 1 - self.beta_2 ** t
        if (_nb is not None and not isinstance(lr, torch.Tensor) and p.dtype == torch.float32
                and g.dtype == torch.float32 and p.is_contiguous() and p.device.type == "cpu"):
            f32 = np.float32
            step = -lr * (math.sqrt(bc2) / bc1 if self.epsilon_hat else 1 / bc1)
            args = (f32(1 - self.beta_1), f32(1 - self.beta_2), f32(step), f32(self.epsilon),
                    f32(1.0 if self.epsilon_hat else 1 / math.sqrt(bc2)))
            none = np.zeros(0, np.float32)
            if penalty is None:   # one row
                rows, l1, l2 = 1, none, none
            else:   # one row per member; the penalty's gradient is added in the same pass
                rows = p.shape[0]
                l1, l2 = (none if c is None else c.detach().to(torch.float32).contiguous().numpy() for c in penalty)
            _adam_kernel(p.detach().view(rows, -1).numpy(), g.detach().contiguous().view(rows, -1).numpy(),
                         m.view(rows, -1).numpy(), v.view(rows, -1).numpy(), l1, l2, *args)
            return
        if penalty is not None:
            g = penalty_gradient(g, p.detach(), *penalty)
        m.lerp_(g, 1 - self.beta_1)
        v.lerp_(g * g, 1 - self.beta_2)
        if self.epsilon_hat:
            denom = v.sqrt().add_(self.epsilon)
            step = math.sqrt(bc2) / bc1
        else:
            denom = v.sqrt().div_(math.sqrt(bc2)).add_(self.epsilon)
            step = 1 / bc1
        if isinstance(lr, torch.Tensor):
            p.sub_(m / denom * (lr * step))
        else:
            p.addcdiv_(m, denom, value=-lr * step)


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras's default ``weight_decay=0.004``)."""

    def __init__(self, params, lr=1e-3, weight_decay=0.004, **kwargs):
        super().__init__(params, lr=lr, weight_decay=weight_decay, **kwargs)


class SGD(Optimizer):
    """Keras's SGD: ``m = momentum * m - lr * g``; ``w += m`` (or ``w += momentum * m - lr * g``
    with Nesterov); plain ``w -= lr * g`` without momentum."""

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, **clipping):
        super().__init__(params, lr, weight_decay, **clipping)
        self.momentum = check_number(momentum, "momentum", "SGD", low=0, high=1)
        self.nesterov = bool(nesterov)

    def _update(self, p, g, lr, state):
        if self.momentum == 0:
            p.sub_(g * lr)
            return
        if not state:
            state["m"] = torch.zeros_like(p)
        m = state["m"]
        m.mul_(self.momentum).sub_(g * lr)
        if self.nesterov:
            p.add_(m * self.momentum - g * lr)
        else:
            p.add_(m)


class RMSprop(Optimizer):
    """Keras's RMSprop: ``v = rho * v + (1 - rho) * g²``; ``w -= lr * g / sqrt(v + eps)`` (ε inside the
    root; centered: ``sqrt(v - a² + eps)`` with ``a = rho * a + (1 - rho) * g``); with momentum
    ``m = momentum * m + lr * g / sqrt(…)``, ``w -= m``. Keras's defaults: lr 1e-3, rho 0.9, ε 1e-7."""

    def __init__(self, params, lr=1e-3, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, weight_decay=0.0,
                 **clipping):
        super().__init__(params, lr, weight_decay, **clipping)
        self.rho = check_number(rho, "rho", "RMSprop", low=0, high=1)
        self.momentum = check_number(momentum, "momentum", "RMSprop", low=0, high=1)
        self.epsilon = check_number(epsilon, "epsilon", "RMSprop", low=0)
        self.centered = bool(centered)

    def _update(self, p, g, lr, state):
        if not state:
            state["v"] = torch.zeros_like(p)
            if self.centered:
                state["a"] = torch.zeros_like(p)
            if self.momentum > 0:
                state["m"] = torch.zeros_like(p)
        v = state["v"]
        v.mul_(self.rho).add_(g * g * (1 - self.rho))
        if self.centered:
            a = state["a"]
            a.mul_(self.rho).add_(g * (1 - self.rho))
            denom = v - a * a + self.epsilon
        else:
            denom = v + self.epsilon
        increment = g * lr / denom.sqrt()
        if self.momentum > 0:
            m = state["m"]
            m.mul_(self.momentum).add_(increment)
            p.sub_(m)
        else:
            p.sub_(increment)


class Adagrad(Optimizer):
    """Keras's Adagrad: ``acc += g²`` (starting at ``initial_accumulator_value`` 0.1);
    ``w -= lr * g / sqrt(acc + eps)``. Keras's defaults: lr 1e-3, ε 1e-7."""

    def __init__(self, params, lr=1e-3, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=0.0, **clipping):
        super().__init__(params, lr, weight_decay, **clipping)
        self.initial_accumulator_value = check_number(initial_accumulator_value, "initial_accumulator_value",
                                                      "Adagrad", low=0)
        self.epsilon = check_number(epsilon, "epsilon", "Adagrad", low=0)

    def _update(self, p, g, lr, state):
        if not state:
            state["acc"] = torch.full_like(p, self.initial_accumulator_value)
        acc = state["acc"]
        acc.add_(g * g)
        p.sub_(g * lr / (acc + self.epsilon).sqrt())


# torch.optim classes whose update is element-wise (each weight's step reads only its own gradient
# and state), so one instance over stacked members is P independent optimizers.
ELEMENTWISE_TORCH = ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta")


class TorchOptimizer(Optimizer):
    """A ``torch.optim`` optimizer class run through reglab's step (clipping, frozen members).

    ``cls`` is e.g. ``torch.optim.Adam`` (or a ``functools.partial`` of it with its settings). Its own
    formulas apply — ``torch.optim.Adam`` puts ε outside the bias-corrected root and ``weight_decay``
    is an L2 gradient term there, unlike Keras's Adam. In a population only element-wise classes are
    accepted (:data:`ELEMENTWISE_TORCH`), with one learning rate for all members.
    """

    def __init__(self, cls, params, lr=None, **clipping):
        params = list(params)
        super().__init__(params, 1e-3 if lr is None else lr, 0.0, **clipping)
        self.cls = cls
        kwargs = {} if lr is None else {"lr": float(lr)}
        try:
            self.torch = cls([p for p in self.params], **kwargs)
        except TypeError as exc:
            raise TypeError(f"The optimizer {_torch_name(cls)} could not be built: {exc}") from None
        if not isinstance(self.torch, torch.optim.Optimizer):
            raise TypeError(f"The 'optimizer' parameter must be a torch.optim.Optimizer class. Got {cls!r} instead.")
        self.lr = self.torch.param_groups[0]["lr"]

    def use_flat(self, flat):   # torch.optim keeps its own per-tensor state
        return None

    @torch.no_grad()
    def step(self, grads=None, active=None, penalties=None) -> None:
        self.iterations += 1
        grads = [p.grad for p in self.params] if grads is None else list(grads)
        grads, _ = self._penalized(grads, penalties, fuse=False)
        if self.clipping:
            grads = self.clipping(grads, self.stacked)
        if isinstance(self.lr, torch.Tensor):
            raise ValueError(f"{_torch_name(self.cls)} takes one learning rate; per-member learning rates need "
                             "one of reglab's optimizers ('adam', 'adamw', 'sgd', 'rmsprop', 'adagrad').")
        for group in self.torch.param_groups:
            group["lr"] = self.lr
        before = [p.detach().clone() for p in self.params] if active is not None else None
        saved = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self.torch.state[p].items()}
                 for p in self.params] if active is not None else None
        for p, g in zip(self.params, grads):
            p.grad = None if g is None else g.detach()
        self.torch.step()
        for p in self.params:
            p.grad = None
        if active is not None:   # frozen members keep their weights and their optimizer state
            for p, old, state in zip(self.params, before, saved):
                keep = self._member_view(~active, p).bool()
                p.copy_(torch.where(keep, old, p))
                for k, v in self.torch.state[p].items():
                    if isinstance(v, torch.Tensor) and v.shape == p.shape and k in state:
                        v.copy_(torch.where(keep, state[k], v))


def _torch_name(cls) -> str:
    func = getattr(cls, "func", cls)   # functools.partial
    return f"torch.optim.{getattr(func, '__name__', repr(func))}"


def is_torch_optimizer(value) -> bool:
    """Whether ``value`` is a torch.optim.Optimizer subclass (or a functools.partial of one)."""
    func = getattr(value, "func", value)
    return isinstance(func, type) and issubclass(func, torch.optim.Optimizer)


def check_elementwise(value) -> None:
    """Refuse a torch.optim class whose update couples weights (L-BFGS, ...) for a population."""
    func = getattr(value, "func", value)
    if func.__name__ not in ELEMENTWISE_TORCH or func.__module__.split(".")[0] != "torch":
        raise ValueError(f"{_torch_name(value)} is not element-wise, so one instance over stacked members would couple "
                         f"them; a population takes torch.optim.{', torch.optim.'.join(ELEMENTWISE_TORCH)} or reglab's "
                         "'adam', 'adamw', 'sgd', 'rmsprop', 'adagrad'. Train it with reglab.fit instead.")


OPTIMIZERS = {"adam": Adam, "adamw": AdamW, "sgd": SGD, "rmsprop": RMSprop, "adagrad": Adagrad}


def make(name: str, params, **kwargs) -> Optimizer:
    """Build an optimizer by name: ``make("adam", model.parameters(), lr=1e-3)``."""
    check_choice(name, "optimizer", "fit", tuple(OPTIMIZERS))
    return OPTIMIZERS[name](params, **kwargs)
