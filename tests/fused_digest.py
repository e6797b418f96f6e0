"""Print a digest of the fused kernel's outputs on fixed inputs (run by test_fused_determinism.py
under different NUMBA_CPU_NAME settings: the digest must not depend on the CPU's vector width)."""

import hashlib
import sys

import numpy as np

from reglab.population import fused

# (activation, task, outputs, activity position): the seeds' shape and the kernel's other branches;
# 37 hidden units leave a tail after the 16-lane sums.
CASES = [(0, 0, 1, 0), (1, 1, 3, 2), (2, 2, 2, 1), (3, 0, 1, 1)]


def digest(P=6, H=37, D=3, B=20, steps=5) -> str:
    h = hashlib.sha256()
    for act, task, K, act_pos in CASES:
        rng = np.random.default_rng(act)
        f32 = lambda *shape, scale=1.0: (scale * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
        W1, b1, W2, b2 = f32(P, H, D, scale=0.5), f32(P, H, scale=0.1), f32(P, K, H, scale=0.3), f32(P, K, scale=0.1)
        X = f32(P, B, D)
        y = (rng.integers(0, 2, (P, B, 1)) if task == 0 else rng.integers(0, K, (P, B, 1)) if task == 1
             else rng.standard_normal((P, B, K))).astype(np.float32)
        grads = [np.empty_like(a) for a in (W1, b1, W2, b2)]
        moments = np.zeros((8, P, max(H * D, K * H)), np.float32)
        l1, l2 = np.full((4, P), 1e-3, np.float32), np.full((4, P), 1e-2, np.float32)
        lr = np.linspace(1e-3, 3e-2, P).astype(np.float32)
        act_l1, act_l2 = np.full(P, 1e-3, np.float32), np.full(P, 1e-2, np.float32)
        divisor = np.full(P, B, np.float32)
        out = [np.empty(P, np.float32) for _ in range(4)]
        for t in range(1, steps + 1):
            hyper = np.array([0.1, 0.001, np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t), 1e-7, 1, 0], np.float32)
            fused._kernel(X, y, W1, b1, W2, b2, act, task, True, *grads, out[0], out[1], True, np.ones(P, bool),
                          l1, l2, moments, lr, hyper, out[2], act_pos, act_l1, act_l2, divisor, out[3])
            for a in (W1, b1, W2, b2, *grads, *out):
                h.update(a.tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    print(digest())
    sys.stdout.flush()
