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
TASKS = {"binary": 0, "multiclass": 1, "regression": 2}


if nb is not None:
    # Every inner loop runs over the hidden units with no branch inside, so LLVM vectorises it.
    @nb.njit(parallel=True, fastmath=True, cache=True)
    def _mlp(X, y, W1T, b1, W2, b2, act, task, grad, gW1T, gb1, gW2, gb2, loss, metric):  # pragma: no cover - compiled
        P, D, H = W1T.shape
        B = X.shape[1]
        K = W2.shape[1]
        for p in nb.prange(P):
            pre = np.empty(H, np.float32)
            h = np.empty(H, np.float32)
            gh = np.empty(H, np.float32)
            o = np.empty(K, np.float32)
            g = np.empty(K, np.float32)
            if grad:
                gW1T[p] = 0.0
                gb1[p] = 0.0
                gW2[p] = 0.0
                gb2[p] = 0.0
            total = 0.0
            score = 0.0
            for b in range(B):
                for j in range(H):
                    pre[j] = b1[p, j]
                for d in range(D):
                    xv = X[p, b, d]
                    for j in range(H):
                        pre[j] += xv * W1T[p, d, j]
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
                    acc = np.float32(0.0)
                    for j in range(H):
                        acc += h[j] * W2[p, k, j]
                    o[k] = acc + b2[p, k]
                if task == 0:
                    z = o[0]
                    t = y[p, b, 0]
                    total += max(z, 0.0) - z * t + math.log1p(math.exp(-abs(z)))
                    score += 1.0 if (1.0 if z > 0 else 0.0) == t else 0.0
                    g[0] = (1.0 / (1.0 + math.exp(-z)) - t) / B
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
                        g[k] = (math.exp(o[k] - m) / se - (1.0 if k == label else 0.0)) / B
                else:
                    sq = 0.0
                    ab = 0.0
                    for k in range(K):
                        diff = o[k] - y[p, b, k]
                        sq += diff * diff
                        ab += abs(diff)
                        g[k] = 2.0 * diff / (K * B)
                    total += sq / K
                    score += ab / K
                if not grad:
                    continue
                for j in range(H):
                    gh[j] = 0.0
                for k in range(K):
                    gk = g[k]
                    gb2[p, k] += gk
                    for j in range(H):
                        gW2[p, k, j] += gk * h[j]
                        gh[j] += gk * W2[p, k, j]
                if act == 0:
                    for j in range(H):
                        gh[j] = gh[j] if pre[j] > 0 else np.float32(0.0)
                elif act == 1:
                    for j in range(H):
                        gh[j] = gh[j] * (np.float32(1.0) - h[j] * h[j])
                elif act == 2:
                    for j in range(H):
                        gh[j] = gh[j] * h[j] * (np.float32(1.0) - h[j])
                for j in range(H):
                    gb1[p, j] += gh[j]
                for d in range(D):
                    xv = X[p, b, d]
                    for j in range(H):
                        gW1T[p, d, j] += gh[j] * xv
            loss[p] = total / B
            metric[p] = score / B


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


class FusedMLP:
    """Runs :func:`_mlp` on a population's stacked Linear-activation-Linear parameters."""

    def __init__(self, layers, act: int):
        self.first, self.last, self.act = layers[0], layers[2], act
        self.params = [self.first.params["weight"], self.first.params["bias"],
                       self.last.params["weight"], self.last.params["bias"]]

    def run(self, X: torch.Tensor, y: torch.Tensor, task, grad: bool):
        """Per-member data loss and metric (P,), and the data-loss gradients when ``grad``."""
        W1, b1, W2, b2 = (p.detach().numpy() for p in self.params)
        P = W1.shape[0]
        W1T = np.ascontiguousarray(W1.transpose(0, 2, 1))
        X = X.to(torch.float32)
        X = X.expand((P,) + X.shape) if X.dim() == 2 else X
        y = y.to(torch.float32)
        y = y.unsqueeze(-1) if task.name != "regression" else y
        y = y.expand((P,) + y.shape) if y.dim() == 2 else y
        Xn, yn = X.numpy(), y.numpy()
        grads = [np.empty_like(W1T), np.empty_like(b1), np.empty_like(W2), np.empty_like(b2)] if grad else \
            [np.empty((P, 1, 1), np.float32), np.empty((P, 1), np.float32), np.empty((P, 1, 1), np.float32), np.empty((P, 1), np.float32)]
        loss = np.empty(P, np.float32)
        metric = np.empty(P, np.float32)
        _mlp(Xn, yn, W1T, b1, W2, b2, self.act, TASKS[task.name], grad, *grads, loss, metric)
        out = (torch.from_numpy(loss), torch.from_numpy(metric))
        if not grad:
            return out + (None,)
        gW1 = torch.from_numpy(np.ascontiguousarray(grads[0].transpose(0, 2, 1)))
        return out + ([gW1] + [torch.from_numpy(g) for g in grads[1:]],)
