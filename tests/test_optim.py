"""reglab.optim against independent NumPy implementations of Keras 3's update rules."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from reglab import optim

SHAPES = [(3, 4), (4,), (2, 3, 2)]


def random_grads(steps, shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s) * rng.uniform(0.1, 3.0) for s in shapes] for _ in range(steps)]


def initial_weights(shapes, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s) for s in shapes]


def as_params(arrays):
    return [torch.nn.Parameter(torch.tensor(a, dtype=torch.float64)) for a in arrays]


def run_reglab(opt_cls, weights, grads, **kwargs):
    params = as_params(weights)
    opt = opt_cls(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return [p.detach().numpy() for p in params], opt


# --- independent NumPy references (Keras 3 formulas) ---------------------------------------

def numpy_adam(weights, grads, lr, b1=0.9, b2=0.999, eps=1e-7, wd=0.0):
    w = [x.copy() for x in weights]
    m = [np.zeros_like(x) for x in weights]
    v = [np.zeros_like(x) for x in weights]
    for t, step_grads in enumerate(grads, start=1):
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for i, g in enumerate(step_grads):
            w[i] = w[i] - lr * wd * w[i]
            m[i] = m[i] + (g - m[i]) * (1 - b1)
            v[i] = v[i] + (g * g - v[i]) * (1 - b2)
            w[i] = w[i] - alpha * m[i] / (np.sqrt(v[i]) + eps)
    return w


def numpy_sgd(weights, grads, lr, momentum=0.0, nesterov=False, wd=0.0):
    w = [x.copy() for x in weights]
    m = [np.zeros_like(x) for x in weights]
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            w[i] = w[i] - lr * wd * w[i]
            if momentum == 0:
                w[i] = w[i] - lr * g
                continue
            m[i] = momentum * m[i] - lr * g
            if nesterov:
                w[i] = w[i] + momentum * m[i] - lr * g
            else:
                w[i] = w[i] + m[i]
    return w


def assert_all_close(got, want, rtol=1e-11, atol=1e-13):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# --- Adam ----------------------------------------------------------------------------------

@pytest.mark.parametrize("lr, b1, b2", [(1e-3, 0.9, 0.999), (0.05, 0.8, 0.99), (0.3, 0.0, 0.5)])
def test_adam_matches_keras_formula(lr, b1, b2):
    weights, grads = initial_weights(SHAPES), random_grads(20, SHAPES)
    got, opt = run_reglab(optim.Adam, weights, grads, lr=lr, beta_1=b1, beta_2=b2)
    assert opt.iterations == 20
    assert_all_close(got, numpy_adam(weights, grads, lr, b1, b2))
    # the update really moved the weights (a no-op optimizer would fail above only by luck)
    assert not np.allclose(got[0], weights[0])


def test_adam_defaults_are_keras_defaults():
    opt = optim.Adam(as_params(initial_weights(SHAPES)))
    assert (opt.lr, opt.beta_1, opt.beta_2, opt.epsilon) == (1e-3, 0.9, 0.999, 1e-7)
    assert opt.epsilon_hat is True and opt.weight_decay == 0.0


def test_adam_epsilon_matters_for_tiny_gradients():
    """ε = 1e-7 in the epsilon-hat form: with g = 1e-6 the step is lr * g/(g+eps) * correction."""
    weights = [np.zeros(3)]
    grads = [[np.full(3, 1e-6)]]
    got, _ = run_reglab(optim.Adam, weights, grads, lr=1.0)
    alpha = np.sqrt(1 - 0.999) / (1 - 0.9)
    m, v = 0.1e-6, 0.001 * 1e-12
    np.testing.assert_allclose(got[0], -alpha * m / (np.sqrt(v) + 1e-7), rtol=1e-12)


def test_adam_without_epsilon_hat_equals_torch_adam():
    weights, grads = initial_weights(SHAPES), random_grads(12, SHAPES, seed=5)
    got, _ = run_reglab(optim.Adam, weights, grads, lr=0.02, beta_1=0.85, beta_2=0.99,
                        epsilon=1e-8, epsilon_hat=False)
    params = as_params(weights)
    ref = torch.optim.Adam(params, lr=0.02, betas=(0.85, 0.99), eps=1e-8)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        ref.step()
    assert_all_close(got, [p.detach().numpy() for p in params])


def test_epsilon_hat_differs_from_torch_placement():
    """The two ε placements are different rules: with small gradients the results differ."""
    weights = [np.zeros(4)]
    grads = [[np.full(4, 1e-7)] for _ in range(3)]
    keras, _ = run_reglab(optim.Adam, weights, grads, lr=0.1, epsilon=1e-7, epsilon_hat=True)
    torch_like, _ = run_reglab(optim.Adam, weights, grads, lr=0.1, epsilon=1e-7, epsilon_hat=False)
    assert not np.allclose(keras[0], torch_like[0], rtol=1e-3)


# --- AdamW ---------------------------------------------------------------------------------

@pytest.mark.parametrize("wd", [0.004, 0.1])
def test_adamw_decoupled_decay_matches_numpy(wd):
    weights, grads = initial_weights(SHAPES), random_grads(20, SHAPES, seed=2)
    got, _ = run_reglab(optim.AdamW, weights, grads, lr=0.01, weight_decay=wd)
    assert_all_close(got, numpy_adam(weights, grads, 0.01, wd=wd))
    # and the decay really is there: plain Adam ends elsewhere
    plain = numpy_adam(weights, grads, 0.01)
    assert not np.allclose(got[0], plain[0], rtol=1e-6)


def test_adamw_default_weight_decay_is_keras_0_004():
    opt = optim.AdamW(as_params(initial_weights(SHAPES)))
    assert opt.weight_decay == 0.004


def test_adamw_decay_with_zero_gradient_is_pure_shrinkage():
    """g = 0: Adam's step is 0 (m = 0), so w only shrinks by (1 - lr * wd) per step."""
    weights = [np.array([1.0, -2.0, 3.0])]
    grads = [[np.zeros(3)] for _ in range(5)]
    got, _ = run_reglab(optim.AdamW, weights, grads, lr=0.1, weight_decay=0.5)
    np.testing.assert_allclose(got[0], weights[0] * (1 - 0.05) ** 5, rtol=1e-12)


# --- SGD -----------------------------------------------------------------------------------

@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.5, True), (0.9, True)])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_sgd_matches_keras_formula(momentum, nesterov, wd):
    weights, grads = initial_weights(SHAPES), random_grads(20, SHAPES, seed=3)
    got, _ = run_reglab(optim.SGD, weights, grads, lr=0.05, momentum=momentum, nesterov=nesterov,
                        weight_decay=wd)
    assert_all_close(got, numpy_sgd(weights, grads, 0.05, momentum, nesterov, wd))


def test_sgd_nesterov_differs_from_plain_momentum():
    weights, grads = initial_weights(SHAPES), random_grads(5, SHAPES, seed=3)
    a, _ = run_reglab(optim.SGD, weights, grads, lr=0.05, momentum=0.9)
    b, _ = run_reglab(optim.SGD, weights, grads, lr=0.05, momentum=0.9, nesterov=True)
    assert not np.allclose(a[0], b[0])


def test_sgd_defaults_are_keras_defaults():
    opt = optim.SGD(as_params(initial_weights(SHAPES)))
    assert (opt.lr, opt.momentum, opt.nesterov) == (0.01, 0.0, False)


# --- explicit gradients, missing gradients, bookkeeping ------------------------------------

def test_step_with_explicit_grads_equals_step_with_p_grad():
    weights, grads = initial_weights(SHAPES), random_grads(6, SHAPES, seed=4)
    via_attr, _ = run_reglab(optim.Adam, weights, grads, lr=0.01)
    params = as_params(weights)
    opt = optim.Adam(params, lr=0.01)
    for step_grads in grads:
        opt.step([torch.tensor(g, dtype=torch.float64) for g in step_grads])
    assert_all_close([p.detach().numpy() for p in params], via_attr, rtol=0, atol=0)


def test_parameter_without_gradient_is_left_alone():
    params = as_params(initial_weights(SHAPES))
    before = [p.detach().clone() for p in params]
    opt = optim.Adam(params, lr=0.1)
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    assert not torch.equal(params[0], before[0])
    assert torch.equal(params[1], before[1]) and torch.equal(params[2], before[2])


def test_zero_grad_clears_gradients():
    params = as_params(initial_weights(SHAPES))
    opt = optim.SGD(params)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_make_builds_by_name():
    params = as_params(initial_weights(SHAPES))
    assert type(optim.make("adam", params)) is optim.Adam
    assert type(optim.make("adamw", params)) is optim.AdamW
    assert type(optim.make("sgd", params, lr=0.1, momentum=0.5)) is optim.SGD
    assert type(optim.make("rmsprop", params)) is optim.RMSprop
    assert type(optim.make("adagrad", params)) is optim.Adagrad
    with pytest.raises(ValueError, match="optimizer"):
        optim.make("adadelta", params)


# --- populations: per-member learning rates and the active mask -----------------------------

P = 4
MEMBER_SHAPES = [(3, 5), (5,), (2, 2, 3)]


def stacked_setup(seed=0):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=(P,) + s) for s in MEMBER_SHAPES]
    grads = [[rng.normal(size=(P,) + s) for s in MEMBER_SHAPES] for _ in range(15)]
    return weights, grads


@pytest.mark.parametrize("opt_cls, kwargs", [
    (optim.Adam, {}),
    (optim.Adam, {"epsilon_hat": False, "epsilon": 1e-8}),
    (optim.AdamW, {"weight_decay": 0.05}),
    (optim.SGD, {}),
    (optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
])
def test_per_member_lr_equals_separate_optimizers(opt_cls, kwargs):
    weights, grads = stacked_setup()
    lrs = [1e-3, 1e-2, 0.1, 0.0]
    got, _ = run_reglab(opt_cls, weights, grads, lr=torch.tensor(lrs, dtype=torch.float64), **kwargs)
    for i, lr in enumerate(lrs):
        member_weights = [w[i] for w in weights]
        member_grads = [[g[i] for g in step] for step in grads]
        want, _ = run_reglab(opt_cls, member_weights, member_grads, lr=lr, **kwargs)
        assert_all_close([g[i] for g in got], want, rtol=1e-12, atol=1e-14)
    # lr = 0 for the last member: it never moves (decoupled decay is lr * wd, so it too is 0)
    for g, w in zip(got, weights):
        np.testing.assert_array_equal(g[P - 1], w[P - 1])


def test_per_member_lr_accepts_numpy_array():
    weights, grads = stacked_setup()
    got_np, _ = run_reglab(optim.Adam, weights, grads, lr=np.array([1e-3, 1e-2, 0.1, 0.2]))
    got_t, _ = run_reglab(optim.Adam, weights, grads, lr=torch.tensor([1e-3, 1e-2, 0.1, 0.2], dtype=torch.float64))
    assert_all_close(got_np, got_t, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("opt_cls, kwargs", [
    (optim.Adam, {"lr": 0.05}),
    (optim.AdamW, {"lr": 0.05, "weight_decay": 0.1}),
    (optim.SGD, {"lr": 0.05, "momentum": 0.9}),
])
def test_active_mask_freezes_members_bitwise(opt_cls, kwargs):
    weights, grads = stacked_setup(seed=7)
    active = torch.tensor([True, False, True, False])
    params = as_params(weights)
    opt = opt_cls(params, **kwargs)
    for step_grads in grads:
        opt.step([torch.tensor(g, dtype=torch.float64) for g in step_grads], active=active)
    unmasked, _ = run_reglab(opt_cls, weights, grads, **kwargs)
    for p, w, u in zip(params, weights, unmasked):
        got = p.detach().numpy()
        for i in range(P):
            if active[i]:
                # the active members are exactly where an unmasked optimizer takes them
                np.testing.assert_array_equal(got[i], u[i])
                assert not np.array_equal(got[i], w[i])
            else:
                np.testing.assert_array_equal(got[i], w[i])


def test_active_mask_can_change_between_steps():
    weights, grads = stacked_setup(seed=8)
    params = as_params(weights)
    opt = optim.SGD(params, lr=0.1)
    g0 = [torch.tensor(g, dtype=torch.float64) for g in grads[0]]
    opt.step(g0, active=torch.tensor([True, True, True, True]))
    after_first = [p.detach().clone() for p in params]
    opt.step(g0, active=torch.tensor([False, True, False, False]))
    for p, a, g in zip(params, after_first, g0):
        assert torch.equal(p[0], a[0]) and torch.equal(p[2], a[2]) and torch.equal(p[3], a[3])
        assert torch.equal(p[1], a[1] - g[1] * 0.1)


# --- argument validation -------------------------------------------------------------------

def fresh_params():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize("opt_cls", [optim.Adam, optim.AdamW, optim.SGD])
@pytest.mark.parametrize("lr, error", [
    (-0.1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    ("0.1", TypeError), (None, TypeError), (True, TypeError),
    (torch.tensor([0.1, -0.1]), ValueError), (torch.ones(2, 2), ValueError),
])
def test_bad_lr_is_rejected(opt_cls, lr, error):
    with pytest.raises(error, match="'lr'"):
        opt_cls(fresh_params(), lr=lr)


@pytest.mark.parametrize("kwargs, error, name", [
    ({"beta_1": 1.0}, ValueError, "beta_1"),
    ({"beta_1": 1.5}, ValueError, "beta_1"),
    ({"beta_1": -0.1}, ValueError, "beta_1"),
    ({"beta_2": 1.0}, ValueError, "beta_2"),
    ({"beta_2": "0.9"}, TypeError, "beta_2"),
    ({"epsilon": -1e-7}, ValueError, "epsilon"),
    ({"weight_decay": -0.01}, ValueError, "weight_decay"),
    ({"weight_decay": "x"}, TypeError, "weight_decay"),
])
def test_bad_adam_arguments_are_rejected(kwargs, error, name):
    with pytest.raises(error, match=f"'{name}'"):
        optim.Adam(fresh_params(), **kwargs)


@pytest.mark.parametrize("kwargs, error, name", [
    ({"momentum": -0.5}, ValueError, "momentum"),
    ({"momentum": 1.5}, ValueError, "momentum"),
    ({"momentum": "0.9"}, TypeError, "momentum"),
    ({"weight_decay": -1.0}, ValueError, "weight_decay"),
])
def test_bad_sgd_arguments_are_rejected(kwargs, error, name):
    with pytest.raises(error, match=f"'{name}'"):
        optim.SGD(fresh_params(), **kwargs)


@pytest.mark.parametrize("opt_cls", [optim.Adam, optim.AdamW, optim.SGD])
def test_empty_parameter_list_is_rejected(opt_cls):
    with pytest.raises(ValueError, match="empty parameter list"):
        opt_cls([])
    with pytest.raises(ValueError, match="empty parameter list"):
        opt_cls(iter(()))


def test_error_message_names_what_was_received():
    with pytest.raises(ValueError, match=r"Got -0\.1 instead"):
        optim.Adam(fresh_params(), lr=-0.1)


def test_state_dict_is_a_copy():
    params = as_params(initial_weights(SHAPES))
    opt = optim.Adam(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    saved = opt.state_dict()
    assert saved["iterations"] == 1
    opt.step()
    assert not torch.equal(saved["state"][0]["m"], opt.state[0]["m"])
    restored = copy.deepcopy(saved)
    assert torch.equal(restored["state"][0]["m"], saved["state"][0]["m"])


def _plain_and_flat(start):
    """Copies of ``start``, and the same values as consecutive views of one flat tensor."""
    flat, views = optim.flat_parameters(start)
    return [t.clone() for t in start], flat, views


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_flat_update_equals_tensor_by_tensor(name):
    """Parameters that are views of one flat tensor are updated in one pass (Optimizer.use_flat):
    bit for bit the tensor-by-tensor update, also when a step with frozen members (the per-tensor
    path) comes between flat steps and shares their state."""
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4, 5), (3, 5), (3, 2, 2)]
    start = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(6)]
    kwargs = dict(lr=1e-2, momentum=0.9) if name == "sgd" else dict(lr=1e-2)
    plain, flat, views = _plain_and_flat(start)
    a, b = optim.make(name, plain, **kwargs), optim.make(name, views, **kwargs)
    b.use_flat(flat)
    active = torch.tensor([True, False, True])
    for step, gs in enumerate(grads):
        mask = active if step == 3 else None
        a.step(gs, active=mask)
        b.step(gs, active=mask)
    for p, q in zip(plain, views):
        assert torch.equal(p, q)


@pytest.mark.parametrize("threads", [False, True])
@pytest.mark.parametrize("block", [7, optim.BLOCK])
def test_flat_adam_adds_penalties_in_its_pass_to_the_bit(monkeypatch, threads, block):
    """Adam's one pass over a flat tensor of stacked parameters, block by block within member rows,
    serial or over threads, adds each member's L1/L2 gradient as penalty_gradient does: the bits of
    adding them first and updating tensor by tensor. A gradient whose matrices (last two dims) are
    stored transposed (a weight used as ``x @ w.mT``) is gathered from that layout, by whole tiles
    of rows and row by row at a block's edges, also where a block spans several matrices of a
    member; a gradient in any other layout is copied first."""
    monkeypatch.setattr(optim, "PARALLEL_MIN", 0 if threads else 1 << 60)
    monkeypatch.setattr(optim, "BLOCK", block)   # 7: rows split into blocks, some partial
    g = torch.Generator().manual_seed(1)
    shapes = [(4, 6, 5), (4, 5), (4, 3, 2), (4,), (4, 2, 3, 5), (4, 3, 4), (4, 40, 5), (4, 2, 20, 3)]
    penalties = [[(torch.tensor([1e-2, 0.0, 3e-2, 1e-3]), None)], None,
                 [(torch.tensor([1e-3, 2e-3, 0.0, 5e-3]), 2 * torch.tensor([1e-3, 5e-2, 0.0, 2e-2]))],
                 [(None, 2 * torch.tensor([1e-1, 0.0, 1e-2, 1e-3]))],
                 [(None, 2 * torch.tensor([1e-2, 1e-3, 0.0, 2e-2]))], None,
                 [(torch.tensor([1e-3, 0.0, 2e-3, 1e-3]), None)], None]
    start = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(5)]
    for gs in grads:   # the same values in other layouts
        for i in (0, 4, 6, 7):
            gs[i] = gs[i].mT.contiguous().mT                # transposed: gathered (40 and 20 rows: tiles)
        gs[5] = torch.stack([gs[5], gs[5]], -1)[..., 0]     # strided: copied
        assert not any(gs[i].is_contiguous() for i in (0, 4, 5, 6, 7))
    plain, flat, views = _plain_and_flat(start)
    a, b = optim.Adam(plain, lr=1e-2), optim.Adam(views, lr=1e-2)
    a.fuses_penalties = False
    b.use_flat(flat)
    for gs in grads:
        a.step([x.clone() for x in gs], penalties=penalties)
        b.step([x.clone() for x in gs], penalties=penalties)
    assert b.flat_state, "the flat pass did not run"
    assert (len(b._blocks[0]) > sum(s[0] for s in shapes)) == (block == 7)
    for p, q in zip(plain, views):
        assert torch.equal(p, q)


# --- L1/L2 penalty gradients added by the optimizer ---------------------------------------------

def _penalized_step(fuse: bool, penalty, active=None, transposed=False, steps=3):
    torch.manual_seed(0)
    p = torch.randn(4, 16, 8)
    opt = optim.Adam([p], lr=0.01)
    opt.fuses_penalties = fuse
    for _ in range(steps):
        g = torch.randn(4, 8, 16).transpose(1, 2) if transposed else torch.randn(4, 16, 8)
        opt.step([g], active=active, penalties=[[penalty]])
    return p, opt.state[0]


@pytest.mark.parametrize("kind", ["l1", "l2", "l1l2"])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("stopped", [False, True])
def test_adam_adds_penalty_gradients_in_its_pass_to_the_bit(kind, transposed, stopped):
    """Adam's numba pass that adds the L1/L2 gradient (sign(w)·l1 + g, then w·2l2 + that) gives the
    bits of penalty_gradient followed by the plain update, with a transposed gradient and a stopped
    member too; and penalty_gradient is what autograd gives for l1·sum|w| + l2·sum w²."""
    l1 = torch.tensor([1e-2, 0.0, 3e-2, 1e-3]) if kind != "l2" else None
    l2 = 2 * torch.tensor([1e-3, 5e-2, 0.0, 2e-2]) if kind != "l1" else None
    active = torch.tensor([True, False, True, True]) if stopped else None
    fused, fused_state = _penalized_step(True, (l1, l2), active, transposed)
    plain, plain_state = _penalized_step(False, (l1, l2), active, transposed)
    assert torch.equal(fused, plain)
    for key in ("m", "v"):
        assert torch.equal(fused_state[key], plain_state[key])

    w = torch.randn(4, 16, 8, requires_grad=True)
    g = torch.randn(4, 16, 8)
    total = (w * g).sum()
    if l1 is not None:
        total = total + (l1 * w.abs().flatten(1).sum(1)).sum()
    if l2 is not None:
        total = total + (l2 / 2 * w.square().flatten(1).sum(1)).sum()
    (auto,) = torch.autograd.grad(total, w)
    torch.testing.assert_close(optim.penalty_gradient(g.clone(), w.detach(), l1, l2), auto, rtol=1e-6, atol=1e-7)
