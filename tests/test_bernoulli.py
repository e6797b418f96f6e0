"""reglab.population.bernoulli: PyTorch's CPU ``bernoulli_(p, generator=g)`` drawn by a compiled
Mersenne Twister on the generator's own state must give the same bits and leave the generator in the
same state, for any size (blocks of 624 words, draws straddling them), probability and interleaving
with PyTorch's other draws — every member's dropout mask in a population comes from it."""

from __future__ import annotations

import pytest
import torch

from reglab.population import bernoulli


def pair(seed):
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)


def test_the_emulation_is_used_on_this_machine():
    # If PyTorch's kernel drew otherwise here, every test below would pass through PyTorch's own
    # kernel and prove nothing about the emulation.
    assert bernoulli._agrees()


@pytest.mark.parametrize("n", [1, 2, 311, 312, 313, 623, 624, 625, 1247, 1248, 1249, 50_000])
@pytest.mark.parametrize("p", [0.0, 1e-9, 0.1, 0.5, 0.9, 1 - 1e-12, 1.0])
def test_same_bits_and_state_as_torch(n, p):
    ours, theirs = pair(n)
    for dtype in (torch.float32, torch.float64):
        a, b = torch.empty(n, dtype=dtype), torch.empty(n, dtype=dtype)
        for _ in range(3):   # the generator continues from where the last draw left it
            bernoulli.masks([(a, p, 1.0)], ours)
            b.bernoulli_(p, generator=theirs)
            assert torch.equal(a, b)
            assert torch.equal(ours.get_state(), theirs.get_state())


def test_interleaved_with_torchs_other_draws():
    ours, theirs = pair(3)
    for n in (5, 700, 33, 1300):
        a, b = torch.empty(n), torch.empty(n)
        bernoulli.masks([(a, 0.8, 1.0)], ours)
        b.bernoulli_(0.8, generator=theirs)
        assert torch.equal(a, b)
        assert torch.equal(torch.rand(7, generator=ours), torch.rand(7, generator=theirs))
        assert torch.equal(torch.randn(3, generator=ours), torch.randn(3, generator=theirs))


def test_masks_write_the_kept_value_as_div_gives_it():
    ours, theirs = pair(11)
    shapes = [(32, 4, 16, 16), (32, 16, 32), (5,), (32, 16, 64)]
    keeps = [0.9, 0.7, 0.5, 1 - 1 / 3]
    outs = [torch.empty(s) for s in shapes]
    one = torch.ones(())
    bernoulli.masks([(o, k, float(one / k)) for o, k in zip(outs, keeps)], ours)
    for o, s, k in zip(outs, shapes, keeps):
        assert torch.equal(o, torch.empty(s).bernoulli_(k, generator=theirs).div_(k))
    assert torch.equal(ours.get_state(), theirs.get_state())


def test_tensors_it_cannot_draw_go_to_torch_in_turn():
    ours, theirs = pair(5)
    strided = torch.empty(40, 2)[:, 0]              # not contiguous: PyTorch's kernel draws it
    items = [(torch.empty(100), 0.6, 1.0), (strided, 0.6, 1.0), (torch.empty(900, dtype=torch.float64), 0.3, 2.0)]
    bernoulli.masks(items, ours)
    want = [torch.empty(100).bernoulli_(0.6, generator=theirs), torch.empty(40).bernoulli_(0.6, generator=theirs),
            torch.empty(900, dtype=torch.float64).bernoulli_(0.3, generator=theirs) * 2.0]
    for (got, _, _), w in zip(items, want):
        assert torch.equal(got, w)
    assert torch.equal(ours.get_state(), theirs.get_state())


def test_without_the_emulation_torch_draws(monkeypatch):
    monkeypatch.setattr(bernoulli, "_agrees", lambda: False)
    ours, theirs = pair(9)
    a = torch.empty(1000)
    bernoulli.masks([(a, 0.4, 1.0)], ours)
    assert torch.equal(a, torch.empty(1000).bernoulli_(0.4, generator=theirs))
