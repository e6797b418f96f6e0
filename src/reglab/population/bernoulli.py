"""``tensor.bernoulli_(p, generator=g)`` on the CPU, the same bits, several times faster.

A population draws every member's dropout masks from that member's own ``torch.Generator``, as the
member's standalone ``fit`` draws them (``empty_like(x).bernoulli_(1 - p)``). PyTorch's CPU kernel
for a scalar ``p`` is serial: per element two 32-bit Mersenne Twister words from the generator,
joined into a 53-bit uniform double, compared with ``p`` — about 15 ns an element, which for a
population of Transformers costs as much as the forward and backward together.

:func:`masks` makes the same words with a compiled Mersenne Twister (numba) working on the
generator's own state (``Generator.get_state()``: PyTorch's ``CPUGeneratorImplState``, whose first
fields are the twister's ``left``/``next`` counters and its 624 words), and writes the state back, so
the tensor and the generator end exactly as after ``bernoulli_``. It is used only where it is known to
agree: CPU tensors of float32/float64 that are contiguous, a state of the expected size, and a
self-check against PyTorch's own kernel on first use (a PyTorch build whose kernel draws otherwise,
e.g. through MKL, fails it and keeps PyTorch's kernel). Tests compare it bit for bit.
"""

from __future__ import annotations

import functools
import math
import struct

import numpy as np
import torch

try:  # numba is a dependency; without it PyTorch's kernel runs
    import numba as nb
except ImportError:  # pragma: no cover
    nb = None

_N = 624                 # Mersenne Twister state words
_HEADER = 24             # the_initial_seed (u64), left (i32), seeded (i32), next (u64)
_STATE_BYTES = 5056      # sizeof(CPUGeneratorImplState) in PyTorch 2.x
_DIGITS = 53             # uniform_real_distribution<double>: 53 bits of random64()

if nb is not None:
    @nb.njit(nogil=True, cache=True, inline="always")
    def _mix(key, k, k1, km):
        y = (key[k] & np.uint32(0x80000000)) | (key[k1] & np.uint32(0x7FFFFFFF))
        key[k] = key[km] ^ (y >> np.uint32(1)) ^ (np.uint32(0x9908B0DF) * (y & np.uint32(1)))

    @nb.njit(nogil=True, cache=True)
    def _twist(key):
        """The next 624 words (MT19937's generation step, as at::mt19937::next_state)."""
        for k in range(_N - 397):
            _mix(key, k, k + 1, k + 397)
        for k in range(_N - 397, _N - 1):
            _mix(key, k, k + 1, k + 397 - _N)
        _mix(key, _N - 1, 0, 396)

    @nb.njit(nogil=True, cache=True)
    def _temper(key, out):
        """MT19937's output transform of every word (into ``out``; the state keeps the raw words)."""
        for k in range(_N):
            y = key[k]
            y ^= y >> np.uint32(11)
            y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
            y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
            out[k] = y ^ (y >> np.uint32(18))

    @nb.njit(nogil=True, cache=True, inline="always")
    def _pairs(words, out, threshold, value, zero):
        # (sliced arrays: the loop starts at 0 on each, which lets LLVM vectorise it)
        for j in range(out.shape[0]):
            draw = ((np.uint64(words[2 * j]) & np.uint64(0x1FFFFF)) << np.uint64(32)) | np.uint64(words[2 * j + 1])
            out[j] = value if draw < threshold else zero

    @nb.njit(nogil=True, cache=True)
    def _fill(key, pos, out, threshold, value):
        """``out[i] = value`` where the i-th draw ``random64() & (2**53 - 1)`` (two words, the first the
        high half) is below ``threshold`` (``p · 2**53`` rounded up), else 0; returns the twister's position."""
        zero = out.dtype.type(0)
        words = np.empty(_N, np.uint32)
        _temper(key, words)
        n, i = out.shape[0], 0
        high, pending = np.uint64(0), False
        while i < n:
            if pos >= _N:
                _twist(key)
                _temper(key, words)
                pos = 0
            if pending:   # a draw whose high word ended the last block
                draw = (high << np.uint64(32)) | np.uint64(words[pos])
                out[i] = value if draw < threshold else zero
                pos += 1
                i += 1
                pending = False
                continue
            m = min((_N - pos) // 2, n - i)
            _pairs(words[pos:pos + 2 * m], out[i:i + m], threshold, value, zero)
            i += m
            pos += 2 * m
            if i < n and pos == _N - 1:
                high, pending = np.uint64(words[pos]) & np.uint64(0x1FFFFF), True
                pos += 1
        return pos


def threshold(p: float) -> np.uint64:
    """The 53-bit draws below which ``bernoulli_(p)`` gives 1: a draw m is ``u = m · 2**-53`` and
    ``u < p  ⟺  m < p · 2**53`` (exact: a power-of-two scaling) ``⟺  m < ceil(p · 2**53)``."""
    return np.uint64(min(max(math.ceil(float(p) * 2.0 ** _DIGITS), 0), 2 ** _DIGITS))


class Twister:
    """A CPU generator's Mersenne Twister, read once (``get_state``), drawn from, written back by
    :meth:`close` (``set_state``); between the two the generator must not be used otherwise."""

    def __init__(self, generator: torch.Generator):
        self.generator, self.state = generator, generator.get_state().clone()
        raw = self.state.numpy()
        _, left, _, nxt = struct.unpack_from("<QiiQ", raw, 0)
        self.key = raw[_HEADER:_HEADER + 8 * _N].view(np.uint64).astype(np.uint32)
        self.pos = _N if left == 1 else nxt   # left == 1: the words are twisted before the next draw

    def fill(self, array: np.ndarray, threshold: np.uint64, value) -> None:
        """``array`` (1-D, contiguous, float32/float64) as ``bernoulli_`` with this ``threshold``
        fills it, its ones written as ``value``."""
        self.pos = _fill(self.key, self.pos, array, threshold, array.dtype.type(value))

    def close(self) -> None:
        raw = self.state.numpy()
        struct.pack_into("<i", raw, 8, _N + 1 - self.pos)      # left + next = 625 between draws
        struct.pack_into("<Q", raw, 16, self.pos)
        raw[_HEADER:_HEADER + 8 * _N].view(np.uint64)[:] = self.key
        self.generator.set_state(self.state)


def usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether masks of ``dtype`` on ``device`` are drawn by the :class:`Twister` (else by PyTorch)."""
    return device.type == "cpu" and dtype in (torch.float32, torch.float64) and _agrees()


@functools.cache
def _agrees() -> bool:
    """Whether the emulation gives PyTorch's own bits here (checked once, on fresh generators)."""
    if nb is None or torch.Generator().get_state().numel() != _STATE_BYTES:
        return False
    for seed, p, n, skip in ((12345, 0.7, 1500, 3), (7, 0.9, 700, 0), (2**40 + 3, 0.5, 2000, 311)):
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        torch.empty(skip).bernoulli_(0.5, generator=ours)
        torch.empty(skip).bernoulli_(0.5, generator=theirs)
        a, b = torch.empty(n), torch.empty(n)
        twister = Twister(ours)
        twister.fill(a.numpy(), threshold(p), 1.0)
        twister.close()
        b.bernoulli_(p, generator=theirs)
        if not torch.equal(a, b) or not torch.equal(ours.get_state(), theirs.get_state()):
            return False
    return True


def masks(items, generator: torch.Generator) -> None:
    """For each ``(out, p, value)`` in turn: ``out.bernoulli_(p, generator=generator)`` with its ones
    written as ``value`` (``mul_(value)`` of a 0/1 mask, exact: ``value`` is converted to ``out``'s dtype
    once). The generator ends as after those calls. Each tensor PyTorch's kernel must draw (see the
    module docstring) is drawn by it, in turn."""
    twister = None
    for out, p, value in items:
        if (generator.device.type == "cpu" and out.is_contiguous() and 0.0 <= p <= 1.0
                and usable(out.device, out.dtype)):
            twister = twister or Twister(generator)
            twister.fill(out.view(-1).numpy(), threshold(p), value)
            continue
        if twister is not None:
            twister.close()
            twister = None
        out.bernoulli_(p, generator=generator)
        if value != 1:
            out.mul_(value)
    if twister is not None:
        twister.close()
