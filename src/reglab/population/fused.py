"""Fused fast path for the seeds' model shape: Linear → activation → Linear.

The generic path materialises (members × batch × hidden) activations several times per step and
is bound by memory traffic on a CPU. Here one compiled loop (numba) runs each member's forward
pass, data loss and backward pass sample by sample with everything in registers and L1 cache,
so a 180-member population of the seeds' 2-500-1 MLP steps in a few milliseconds. It computes
only the *data* loss and its gradients; penalties, constraints, the optimizer and early stopping
stay on the generic code, and tests check this path against the generic one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

try:  # numba is a dependency; without it the generic path runs
    import numba as nb
except ImportError:  # pragma: no cover
    nb = None

ACTIVATIONS = {nn.ReLU: 0, nn.Tanh: 1, nn.Sigmoid: 2, nn.Identity: 3}
# Subnormal float32 values cost ~100 cycles per operation on x86. Late in training a confident
# model's output gradients fall below float32's smallest normal number (1 - sigmoid(z) < 1.2e-38
# for z > 87) and Adam's second moments of tiny gradients follow; these loops flush such values
# to zero, as TensorFlow/Keras does for all CPU arithmetic (flush-to-zero), and the steps stay fast.
TINY = np.float32(np.finfo(np.float32).tiny)          # 1.1754944e-38
SQRT_TINY = np.float32(np.sqrt(np.finfo(np.float32).tiny))
TASKS = {"binary": 0, "multiclass": 1, "regression": 2}
CHUNK = 4    # members per scheduling chunk: a thread that runs faster takes more of them
LANES = 16   # partial sums per reduction: fixed, so that the order of every sum is fixed


if nb is not None:
    from ..optim import adam_moments, adam_weight
    # Every sum runs in one fixed order, whatever the CPU's vector width: LANES running partial sums
    # (lane l takes the elements j = l mod LANES of the first n - n % LANES), folded pairwise in a
    # fixed tree, then the remaining elements in order. The lanes are independent scalars, so LLVM's
    # SLP vectoriser packs them into registers (2 ymm on AVX2, 1 zmm on AVX-512, 4 xmm on SSE or NEON)
    # without reassociating anything: the same IEEE operations in the same order, hence the same bits.
    @nb.njit(inline="always")
    def _dot(a, b):  # pragma: no cover - compiled
        # sum(a * b) in float32.
        n = a.size
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = s10 = s11 = s12 = s13 = s14 = s15 = np.float32(0.0)
        body = n - n % LANES
        for start in range(0, body, LANES):
            s0 += a[start + 0] * b[start + 0]
            s1 += a[start + 1] * b[start + 1]
            s2 += a[start + 2] * b[start + 2]
            s3 += a[start + 3] * b[start + 3]
            s4 += a[start + 4] * b[start + 4]
            s5 += a[start + 5] * b[start + 5]
            s6 += a[start + 6] * b[start + 6]
            s7 += a[start + 7] * b[start + 7]
            s8 += a[start + 8] * b[start + 8]
            s9 += a[start + 9] * b[start + 9]
            s10 += a[start + 10] * b[start + 10]
            s11 += a[start + 11] * b[start + 11]
            s12 += a[start + 12] * b[start + 12]
            s13 += a[start + 13] * b[start + 13]
            s14 += a[start + 14] * b[start + 14]
            s15 += a[start + 15] * b[start + 15]
        total = (((s0 + s8) + (s4 + s12)) + ((s2 + s10) + (s6 + s14))) + (((s1 + s9) + (s5 + s13)) + ((s3 + s11) + (s7 + s15)))
        for j in range(body, n):
            total += a[j] * b[j]
        return total

    @nb.njit(inline="always")
    def _penalty(w, c1, c2):  # pragma: no cover - compiled
        # sum(c1 * |w| + c2 * w * w): each term in float32 (as torch), summed in float64.
        n = w.size
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = s10 = s11 = s12 = s13 = s14 = s15 = 0.0
        body = n - n % LANES
        for start in range(0, body, LANES):
            s0 += c1 * abs(w[start + 0]) + c2 * w[start + 0] * w[start + 0]
            s1 += c1 * abs(w[start + 1]) + c2 * w[start + 1] * w[start + 1]
            s2 += c1 * abs(w[start + 2]) + c2 * w[start + 2] * w[start + 2]
            s3 += c1 * abs(w[start + 3]) + c2 * w[start + 3] * w[start + 3]
            s4 += c1 * abs(w[start + 4]) + c2 * w[start + 4] * w[start + 4]
            s5 += c1 * abs(w[start + 5]) + c2 * w[start + 5] * w[start + 5]
            s6 += c1 * abs(w[start + 6]) + c2 * w[start + 6] * w[start + 6]
            s7 += c1 * abs(w[start + 7]) + c2 * w[start + 7] * w[start + 7]
            s8 += c1 * abs(w[start + 8]) + c2 * w[start + 8] * w[start + 8]
            s9 += c1 * abs(w[start + 9]) + c2 * w[start + 9] * w[start + 9]
            s10 += c1 * abs(w[start + 10]) + c2 * w[start + 10] * w[start + 10]
            s11 += c1 * abs(w[start + 11]) + c2 * w[start + 11] * w[start + 11]
            s12 += c1 * abs(w[start + 12]) + c2 * w[start + 12] * w[start + 12]
            s13 += c1 * abs(w[start + 13]) + c2 * w[start + 13] * w[start + 13]
            s14 += c1 * abs(w[start + 14]) + c2 * w[start + 14] * w[start + 14]
            s15 += c1 * abs(w[start + 15]) + c2 * w[start + 15] * w[start + 15]
        total = (((s0 + s8) + (s4 + s12)) + ((s2 + s10) + (s6 + s14))) + (((s1 + s9) + (s5 + s13)) + ((s3 + s11) + (s7 + s15)))
        for j in range(body, n):
            total += c1 * abs(w[j]) + c2 * w[j] * w[j]
        return total

    @nb.njit(inline="always")
    def _adam(w, g, m, v, c1, c2, hyper, lr):  # pragma: no cover - compiled
        # reglab.optim.Adam (Keras form; its moment and weight formulas) with the L1/L2 penalty
        # gradient and decoupled weight decay, subnormals flushed, one pass per tensor.
        w1, w2, bias, eps, inv, decay = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
        step = -lr * bias
        for i in range(w.size):
            wi = w[i]
            gi = g[i] + c1 * np.sign(wi) + np.float32(2.0) * c2 * wi   # float32 throughout, as torch
            wi = wi - wi * (lr * decay)
            gs = gi if abs(gi) >= SQRT_TINY else np.float32(0.0)        # gs * gs is normal or zero
            mi, vi = adam_moments(gi, gs * gs, m[i], v[i], w1, w2)
            mi = mi if abs(mi) >= TINY else np.float32(0.0)
            vi = vi if vi >= TINY else np.float32(0.0)
            m[i] = mi
            v[i] = vi
            w[i] = adam_weight(wi, mi, vi, step, inv, eps)

    # Every inner loop runs over the hidden units with no branch inside, so LLVM vectorises it. No
    # fastmath: every operation is one IEEE float32/float64 operation in the order written (no
    # reassociation, no fused multiply-add), so a member's numbers are the same on any CPU.
    @nb.njit(parallel=True, error_model="numpy", cache=True)
    def _mlp(X, y, W1, b1, W2, b2, act, task, grad, gW1, gb1, gW2, gb2, loss, metric,
             update, active, l1, l2, moments, lr, hyper, penalty,
             act_pos, act_l1, act_l2, act_div, activity):  # pragma: no cover - compiled
        P, H, D = W1.shape
        B = X.shape[1]
        K = W2.shape[1]
        for p in nb.prange(P):
            if update and not active[p]:
                loss[p] = np.nan
                metric[p] = np.nan
                penalty[p] = np.nan
                continue
            # This member's first-layer weights, transposed to (in, hidden) so loops run over units.
            W1T = np.empty((D, H), np.float32)
            gW1T = np.zeros((D, H), np.float32)
            for j in range(H):
                for d in range(D):
                    W1T[d, j] = W1[p, j, d]
            pre = np.empty(H, np.float32)
            h = np.empty(H, np.float32)
            gh = np.empty(H, np.float32)
            o = np.empty(K, np.float32)
            g = np.empty(K, np.float32)
            if grad:
                gb1[p] = 0.0
                gW2[p] = 0.0
                gb2[p] = 0.0
            total = 0.0
            score = 0.0
            act_total = 0.0
            a1 = act_l1[p] if act_pos else np.float32(0.0)
            a2 = act_l2[p] if act_pos else np.float32(0.0)
            inv_div = np.float32(1.0) / act_div[p] if act_pos else np.float32(0.0)
            for b in range(B):
                for j in range(H):
                    pre[j] = b1[p, j]
                for d in range(D):
                    xv = X[p, b, d]
                    for j in range(H):
                        pre[j] += xv * W1T[d, j]
                if act == 0:
                    for j in range(H):
                        h[j] = max(pre[j], np.float32(0.0))
                elif act == 1:
                    for j in range(H):
                        h[j] = np.tanh(pre[j])
                elif act == 2:
                    for j in range(H):
                        h[j] = np.float32(1.0) / (np.float32(1.0) + np.exp(-pre[j]))
                else:
                    for j in range(H):
                        h[j] = pre[j]
                for k in range(K):
                    o[k] = _dot(h, W2[p, k]) + b2[p, k]
                if act_pos:   # activity penalty on the hidden layer's output (1: before, 2: after the activation)
                    act_total += _penalty(pre if act_pos == 1 else h, a1, a2)
                if task == 0:
                    z = o[0]
                    t = y[p, b, 0]
                    total += max(z, 0.0) - z * t + math.log1p(math.exp(-abs(z)))
                    score += 1.0 if (1.0 if z > 0 else 0.0) == t else 0.0
                    gz = (1.0 / (1.0 + math.exp(-z)) - t) / B
                    g[0] = gz if abs(gz) >= SQRT_TINY else 0.0
                elif task == 1:
                    label = int(y[p, b, 0])
                    m = o[0]
                    best = 0
                    for k in range(1, K):
                        if o[k] > m:
                            m = o[k]
                            best = k
                    se = 0.0
                    for k in range(K):
                        se += math.exp(o[k] - m)
                    total += m + math.log(se) - o[label]
                    score += 1.0 if best == label else 0.0
                    for k in range(K):
                        gz = (math.exp(o[k] - m) / se - (1.0 if k == label else 0.0)) / B
                        g[k] = gz if abs(gz) >= SQRT_TINY else 0.0
                else:
                    sq = 0.0
                    ab = 0.0
                    for k in range(K):
                        diff = o[k] - y[p, b, k]
                        sq += diff * diff
                        ab += abs(diff)
                        gz = 2.0 * diff / (K * B)
                        g[k] = gz if abs(gz) >= SQRT_TINY else 0.0
                    total += sq / K
                    score += ab / K
                if not grad:
                    continue
                if act == 0 and K == 1 and act_pos == 0:
                    gk = g[0]
                    gb2[p, 0] += gk
                    for j in range(H):
                        gW2[p, 0, j] += gk * h[j]
                        v = gk * W2[p, 0, j]
                        v = v if pre[j] > 0 else np.float32(0.0)
                        gh[j] = v
                        gb1[p, j] += v
                else:
                    for j in range(H):
                        gh[j] = 0.0
                    for k in range(K):
                        gk = g[k]
                        gb2[p, k] += gk
                        for j in range(H):
                            gW2[p, k, j] += gk * h[j]
                            gh[j] += gk * W2[p, k, j]
                    if act_pos == 2:
                        for j in range(H):
                            gh[j] += (a1 * np.sign(h[j]) + np.float32(2.0) * a2 * h[j]) * inv_div
                    if act == 0:
                        for j in range(H):
                            gh[j] = gh[j] if pre[j] > 0 else np.float32(0.0)
                    elif act == 1:
                        for j in range(H):
                            gh[j] = gh[j] * (np.float32(1.0) - h[j] * h[j])
                    elif act == 2:
                        for j in range(H):
                            gh[j] = gh[j] * h[j] * (np.float32(1.0) - h[j])
                    if act_pos == 1:
                        for j in range(H):
                            gh[j] += (a1 * np.sign(pre[j]) + np.float32(2.0) * a2 * pre[j]) * inv_div
                    for j in range(H):
                        gb1[p, j] += gh[j]
                for d in range(D):
                    xv = X[p, b, d]
                    for j in range(H):
                        gW1T[d, j] += gh[j] * xv
            if grad:
                for j in range(H):
                    for d in range(D):
                        gW1[p, j, d] = gW1T[d, j]
            loss[p] = total / B
            metric[p] = score / B
            activity[p] = act_total * inv_div if act_pos else 0.0
            if not update:
                continue
            # Penalties and the optimizer step, while this member's weights are still in cache.
            w1f, g1f = W1[p].reshape(H * D), gW1[p].reshape(H * D)
            w2f, g2f = W2[p].reshape(K * H), gW2[p].reshape(K * H)
            pen = (_penalty(w1f, l1[0, p], l2[0, p]) + _penalty(b1[p], l1[1, p], l2[1, p])
                   + _penalty(w2f, l1[2, p], l2[2, p]) + _penalty(b2[p], l1[3, p], l2[3, p]))
            pen += activity[p]
            penalty[p] = pen
            total_loss = loss[p] + pen
            if not np.isfinite(total_loss):
                continue   # diverged: frozen before this step, as on the generic path
            _adam(w1f, g1f, moments[0, p, :H * D], moments[4, p, :H * D], l1[0, p], l2[0, p], hyper, lr[p])
            _adam(b1[p], gb1[p], moments[1, p, :H], moments[5, p, :H], l1[1, p], l2[1, p], hyper, lr[p])
            _adam(w2f, g2f, moments[2, p, :K * H], moments[6, p, :K * H], l1[2, p], l2[2, p], hyper, lr[p])
            _adam(b2[p], gb2[p], moments[3, p, :K], moments[7, p, :K], l1[3, p], l2[3, p], hyper, lr[p])


def _kernel(*args):
    """Call :func:`_mlp`, compiling it (a new signature) with LLVM's SLP vectoriser switched on.

    numba leaves the SLP vectoriser off by default (numba#8705, a miscompilation elsewhere); without
    it the fixed-order sums above run one lane at a time (about 25 % slower). The tests check this
    kernel's results against the generic path, and the same bits under every vector width."""
    from numba.core import config

    previous = config.SLP_VECTORIZE
    config.SLP_VECTORIZE = 1
    try:
        with nb.parallel_chunksize(CHUNK):
            return _mlp(*args)
    finally:
        config.SLP_VECTORIZE = previous


_NO_ACTIVE = np.zeros(1, np.bool_)
_NO_COEF = np.zeros((4, 1), np.float32)
_NO_MOMENTS = np.zeros((8, 1, 1), np.float32)
_NO_LR = np.zeros(1, np.float32)
_NO_HYPER = np.zeros(6, np.float32)
_NO_ACT = np.zeros(1, np.float32)


def plan(layers) -> int | None:
    """The activation code when ``layers`` are Linear → activation → Linear on flat inputs, else None."""
    from . import layers as L

    if nb is None or len(layers) != 3:
        return None
    first, mid, last = layers
    if not (isinstance(first, L.Linear) and isinstance(last, L.Linear) and isinstance(mid, L.Stateless)):
        return None
    if "bias" not in first.params or "bias" not in last.params or type(mid.module) not in ACTIVATIONS:
        return None
    if first.params["weight"].dtype != torch.float32:
        return None
    return ACTIVATIONS[type(mid.module)]


def activity_plan(activity: dict):
    """(position, l1, l2, mean-convention mask) for an L1/L2 activity penalty on the hidden layer
    (position 1: the first Linear's output, 2: the activation's output); None if the fused kernel
    cannot compute it; (0, ...) when there is none."""
    if not activity:
        return 0, None, None, None
    if len(activity) != 1:
        return None
    (pos, (merged, mean)), = activity.items()
    if pos not in (0, 1) or merged.custom or any(type(g).__name__ != "L1L2" for g in merged.groups):
        return None
    P = len(mean)
    l1 = np.zeros(P, np.float32)
    l2 = np.zeros(P, np.float32)
    for pen in merged.groups:
        l1 += np.broadcast_to(np.asarray(torch.as_tensor(pen.l1).float()), (P,))
        l2 += np.broadcast_to(np.asarray(torch.as_tensor(pen.l2).float()), (P,))
    return pos + 1, l1, l2, mean.numpy().astype(bool)


class FusedMLP:
    """Runs :func:`_mlp` on a population's stacked Linear-activation-Linear parameters."""

    def __init__(self, layers, act: int, activity=(0, None, None, None)):
        self.first, self.last, self.act = layers[0], layers[2], act
        self.act_pos, self.act_l1, self.act_l2, self.act_mean = activity
        self.params = [self.first.params["weight"], self.first.params["bias"],
                       self.last.params["weight"], self.last.params["bias"]]
        self._buffers = None
        self._moments = None

    def run(self, X: torch.Tensor, y: torch.Tensor, task, grad: bool):
        """Per-member data loss, metric and activity penalty (P,), and the gradients of data loss +
        activity penalty when ``grad``.

        The gradients live in buffers that the next call overwrites: use them before calling again."""
        W1, b1, W2, b2 = (p.detach().numpy() for p in self.params)
        P = W1.shape[0]
        X = X.to(torch.float32)
        X = X.expand((P,) + X.shape) if X.dim() == 2 else X
        y = y.to(torch.float32)
        y = y.unsqueeze(-1) if task.name != "regression" else y
        y = y.expand((P,) + y.shape) if y.dim() == 2 else y
        Xn, yn = X.numpy(), y.numpy()
        if grad:
            if self._buffers is None:   # reused every step: fresh arrays cost page faults each time
                self._buffers = [np.empty_like(W1), np.empty_like(b1), np.empty_like(W2), np.empty_like(b2)]
            grads = self._buffers
        else:
            grads = [np.empty((P, 1, 1), np.float32), np.empty((P, 1), np.float32),
                     np.empty((P, 1, 1), np.float32), np.empty((P, 1), np.float32)]
        loss = np.empty(P, np.float32)
        metric = np.empty(P, np.float32)
        activity = np.empty(P, np.float32)
        _kernel(Xn, yn, W1, b1, W2, b2, self.act, TASKS[task.name], grad, *grads, loss, metric,
             False, _NO_ACTIVE, _NO_COEF, _NO_COEF, _NO_MOMENTS, _NO_LR, _NO_HYPER, loss,
             *self._activity_args(Xn.shape[1]), activity)
        out = (torch.from_numpy(loss), torch.from_numpy(metric), torch.from_numpy(activity))
        if not grad:
            return out + (None,)
        return out + ([torch.from_numpy(g) for g in grads],)

    def _activity_args(self, batch: int):
        if not self.act_pos:
            return 0, _NO_ACT, _NO_ACT, _NO_ACT
        divisor = np.where(self.act_mean, np.float32(batch), np.float32(1.0)).astype(np.float32)
        return self.act_pos, self.act_l1, self.act_l2, divisor

    def optimizer_plan(self, opt, penalties):
        """Per-parameter (l1, l2) coefficient arrays when the whole step can run fused, else None.

        That is: the optimizer is reglab's Adam/AdamW and every penalty is L1/L2/L1L2."""
        from ..optim import Adam

        if not isinstance(opt, Adam):
            return None
        P = self.params[0].shape[0]
        l1 = np.zeros((4, P), np.float32)
        l2 = np.zeros((4, P), np.float32)
        index = {id(p): i for i, p in enumerate(self.params)}
        for param, merged in penalties:
            if merged.custom or id(param) not in index or any(type(g).__name__ != "L1L2" for g in merged.groups):
                return None
            for pen in merged.groups:
                l1[index[id(param)]] += np.broadcast_to(np.asarray(torch.as_tensor(pen.l1).float()), (P,))
                l2[index[id(param)]] += np.broadcast_to(np.asarray(torch.as_tensor(pen.l2).float()), (P,))
        return l1, l2

    def train_step(self, X, y, task, opt, coefs, active):
        """One fused step: data loss, L1/L2 penalties, gradients and the Adam update of every active member.

        Returns per-member data loss, metric and penalty (NaN for inactive members); a member whose
        loss is not finite is left as it was."""
        W1, b1, W2, b2 = (p.detach().numpy() for p in self.params)
        P, H, D = W1.shape
        K = W2.shape[1]
        if self._moments is None:
            self._moments = np.zeros((8, P, max(H * D, K * H, H, K)), np.float32)
        if self._buffers is None:
            self._buffers = [np.empty_like(W1), np.empty_like(b1), np.empty_like(W2), np.empty_like(b2)]
        opt.iterations += 1
        t = opt.iterations
        bc1, bc2 = 1 - opt.beta_1 ** t, 1 - opt.beta_2 ** t
        bias = math.sqrt(bc2) / bc1 if opt.epsilon_hat else 1 / bc1
        inv = 1.0 if opt.epsilon_hat else 1 / math.sqrt(bc2)
        hyper = np.array([1 - opt.beta_1, 1 - opt.beta_2, bias, opt.epsilon, inv, opt.weight_decay], np.float32)
        lr = np.broadcast_to(np.asarray(torch.as_tensor(opt.lr).float()), (P,)).copy()
        X = X.to(torch.float32)
        X = X.expand((P,) + X.shape) if X.dim() == 2 else X
        y = y.to(torch.float32)
        y = y.unsqueeze(-1) if task.name != "regression" else y
        y = y.expand((P,) + y.shape) if y.dim() == 2 else y
        loss = np.empty(P, np.float32)
        metric = np.empty(P, np.float32)
        penalty = np.empty(P, np.float32)
        activity = np.empty(P, np.float32)
        _kernel(X.numpy(), y.numpy(), W1, b1, W2, b2, self.act, TASKS[task.name], True, *self._buffers, loss, metric,
             True, active.numpy(), coefs[0], coefs[1], self._moments, lr, hyper, penalty,
             *self._activity_args(X.shape[1]), activity)
        return torch.from_numpy(loss), torch.from_numpy(metric), torch.from_numpy(penalty)
