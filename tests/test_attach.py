"""regularize / penalty / apply_constraints on real torch.nn modules."""

import numpy as np
import pytest
import torch
from torch import nn

import reglab
from reglab import L1, L1L2, L2, MaxNorm, MinMaxNorm, NonNeg, Orthogonal, UnitNorm
from reglab.attach import activity_penalty, attached, registry, role_params, weight_penalty

EPS = 1e-7


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def np_max_norm_rows(w, c):
    n = np.sqrt((w.astype(np.float64) ** 2).reshape(w.shape[0], -1).sum(1)).reshape((-1,) + (1,) * (w.ndim - 1))
    return w * np.clip(n, 0, c) / (EPS + n)


# ---------------------------------------------------------------- roles


def test_role_params_dense_and_conv():
    assert role_params(nn.Linear(3, 2), "kernel") == ["weight"]
    assert role_params(nn.Linear(3, 2), "bias") == ["bias"]
    assert role_params(nn.Linear(3, 2), "recurrent") == []
    assert role_params(nn.Linear(3, 2, bias=False), "bias") == []
    assert role_params(nn.Conv2d(3, 4, 3), "kernel") == ["weight"]
    assert role_params(nn.Conv1d(3, 4, 3), "bias") == ["bias"]
    assert role_params(nn.ReLU(), "kernel") == []


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_role_params_recurrent(cls):
    rnn = cls(3, 4, num_layers=2, bidirectional=True)
    kernel = role_params(rnn, "kernel")
    recurrent = role_params(rnn, "recurrent")
    bias = role_params(rnn, "bias")
    assert sorted(kernel) == sorted(["weight_ih_l0", "weight_ih_l1", "weight_ih_l0_reverse", "weight_ih_l1_reverse"])
    assert sorted(recurrent) == sorted(["weight_hh_l0", "weight_hh_l1", "weight_hh_l0_reverse",
                                        "weight_hh_l1_reverse"])
    assert len(bias) == 8 and all(b.startswith(("bias_ih", "bias_hh")) for b in bias)
    assert set(kernel) | set(recurrent) | set(bias) == {n for n, _ in rnn.named_parameters()}


# ---------------------------------------------------------------- weight penalties


def test_linear_kernel_and_bias_penalties_equal_hand_sum():
    lin = nn.Linear(5, 3)
    reglab.regularize(lin, kernel=L2(1e-3), bias=L1(0.1))
    expected = 1e-3 * lin.weight.pow(2).sum() + 0.1 * lin.bias.abs().sum()
    torch.testing.assert_close(reglab.penalty(lin), expected)
    torch.testing.assert_close(weight_penalty(lin), expected)
    assert float(activity_penalty(lin)) == 0.0


def test_conv_kernel_penalty():
    conv = nn.Conv2d(3, 4, 3)
    reglab.regularize(conv, kernel="l1_l2(l1=1e-5, l2=1e-4)")
    expected = 1e-5 * conv.weight.abs().sum() + 1e-4 * conv.weight.pow(2).sum()
    torch.testing.assert_close(reglab.penalty(conv), expected)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_roles_equal_hand_sum(cls):
    rnn = cls(3, 4, num_layers=2, batch_first=True)
    reglab.regularize(rnn, kernel=L2(0.01), recurrent=L1(0.02), bias="l2(0.5)")
    p = dict(rnn.named_parameters())
    expected = (0.01 * (p["weight_ih_l0"].pow(2).sum() + p["weight_ih_l1"].pow(2).sum())
                + 0.02 * (p["weight_hh_l0"].abs().sum() + p["weight_hh_l1"].abs().sum())
                + 0.5 * sum(p[n].pow(2).sum() for n in ("bias_ih_l0", "bias_hh_l0", "bias_ih_l1", "bias_hh_l1")))
    torch.testing.assert_close(reglab.penalty(rnn), expected)


def test_model_penalty_sums_every_module():
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    reglab.regularize(model[0], kernel=L2(1e-3))
    reglab.regularize(model[2], kernel=L1(1e-4), bias=L2(0.1))
    reglab.regularize(model[4], kernel=Orthogonal(0.5, mode="columns"))
    expected = (1e-3 * model[0].weight.pow(2).sum() + 1e-4 * model[2].weight.abs().sum()
                + 0.1 * model[2].bias.pow(2).sum() + Orthogonal(0.5, "columns")(model[4].weight))
    torch.testing.assert_close(reglab.penalty(model), expected)
    assert [name for name, _, _ in attached(model)] == ["0", "2", "4"]
    torch.testing.assert_close(reglab.penalty(model, scale=0.25), 0.25 * expected)


def test_penalty_with_nothing_attached_is_zero():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    value = reglab.penalty(model)
    assert value.shape == () and float(value) == 0.0
    assert float(reglab.penalty(nn.ReLU())) == 0.0
    assert reglab.penalty(nn.Linear(2, 2).double()).dtype == torch.float64


def test_penalty_gradient_is_added_to_the_weights():
    lin = nn.Linear(4, 3)
    reglab.regularize(lin, kernel=L2(0.5))
    reglab.penalty(lin).backward()
    torch.testing.assert_close(lin.weight.grad, 2 * 0.5 * lin.weight.detach())
    assert lin.bias.grad is None


def test_text_and_callable_penalties():
    lin = nn.Linear(4, 3)
    reglab.regularize(lin, kernel="L2(0.01)", bias=lambda b: b.sum() ** 2)
    expected = 0.01 * lin.weight.pow(2).sum() + lin.bias.sum() ** 2
    torch.testing.assert_close(reglab.penalty(lin), expected)
    reg = registry(lin)
    assert reg.penalties["weight"] == L2(0.01)


def test_penalty_class_means_its_defaults():
    lin = nn.Linear(4, 3)
    reglab.regularize(lin, kernel=L2, kernel_constraint=UnitNorm)
    torch.testing.assert_close(reglab.penalty(lin), 0.01 * lin.weight.pow(2).sum())
    reglab.apply_constraints(lin)
    torch.testing.assert_close(lin.weight.norm(dim=1), torch.ones(3), atol=1e-6, rtol=0)


def test_named_parameter_targeting():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    reglab.regularize(model, penalties={"0.weight": "l2(1)", "2.bias": L1(0.5)},
                      constraints={"2.weight": NonNeg(), "0.bias": "max_norm(0.1)"})
    expected = model[0].weight.pow(2).sum() + 0.5 * model[2].bias.abs().sum()
    torch.testing.assert_close(reglab.penalty(model), expected)
    with torch.no_grad():
        model[0].bias.mul_(100)
    reglab.apply_constraints(model)
    assert bool((model[2].weight >= 0).all())
    assert float(model[0].bias.detach().norm()) <= 0.1 + 1e-6


def test_per_member_penalty_on_stacked_parameter():
    class Stacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 4, 2))

    m = Stacked()
    reglab.regularize(m, penalties={"w": L2(torch.tensor([0.0, 0.1, 1.0]))})
    got = reglab.penalty(m)
    assert got.shape == (3,)
    expected = torch.stack([c * m.w[i].pow(2).sum() for i, c in enumerate([0.0, 0.1, 1.0])])
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------- activity penalties


def test_activity_mean_convention_divides_by_batch():
    lin = nn.Linear(4, 3)
    reglab.regularize(lin, activity=L1(0.01))
    x = torch.randn(8, 4)
    z = lin(x)
    torch.testing.assert_close(reglab.penalty(lin), 0.01 * z.abs().sum() / 8)
    torch.testing.assert_close(activity_penalty(lin), 0.01 * z.abs().sum() / 8)
    assert float(weight_penalty(lin)) == 0.0


def test_activity_sum_convention_is_the_batch_sum():
    lin = nn.Linear(4, 3)
    reglab.regularize(lin, activity=L2(0.01), activity_convention="sum")
    z = lin(torch.randn(8, 4))
    torch.testing.assert_close(reglab.penalty(lin), 0.01 * z.pow(2).sum())


def test_activity_uses_the_last_forward_pass():
    lin = nn.Linear(4, 3)
    reglab.regularize(lin, activity=L1(1.0))
    lin(torch.randn(8, 4))
    x = torch.randn(5, 4)
    z = lin(x)
    torch.testing.assert_close(reglab.penalty(lin), z.abs().sum() / 5)
    assert float(reglab.penalty(nn.Sequential(nn.Linear(4, 3)))) == 0.0


def test_activity_before_and_after_the_activation():
    torch.manual_seed(3)
    x = torch.randn(16, 2)
    before = nn.Sequential(nn.Linear(2, 6), nn.ReLU())
    after = nn.Sequential(nn.Linear(2, 6), nn.ReLU())
    after.load_state_dict(before.state_dict())
    reglab.regularize(before[0], activity=L1(1e-2))     # on the Linear: pre-activation
    reglab.regularize(after[1], activity=L1(1e-2))      # on the ReLU: post-activation
    z = before[0](x).detach()
    before(x)
    after(x)
    pre = reglab.penalty(before)
    post = reglab.penalty(after)
    torch.testing.assert_close(pre, 1e-2 * z.abs().sum() / 16)
    torch.testing.assert_close(post, 1e-2 * z.clamp_min(0).sum() / 16)
    assert float(pre.detach()) > float(post.detach()) > 0


def test_activity_gradient_reaches_the_layer():
    lin = nn.Linear(3, 2)
    reglab.regularize(lin, activity=L2(0.5))
    x = torch.randn(4, 3)
    lin(x)
    reglab.penalty(lin).backward()
    got = lin.weight.grad.clone()
    lin.weight.grad = None
    (0.5 * lin(x).pow(2).sum() / 4).backward()
    torch.testing.assert_close(got, lin.weight.grad)


@pytest.mark.parametrize("batch_first", [True, False])
def test_activity_on_rnn_divides_by_batch_not_time(batch_first):
    lstm = nn.LSTM(3, 4, batch_first=batch_first)
    reglab.regularize(lstm, activity=L1(1.0))
    x = torch.randn(2, 7, 3) if batch_first else torch.randn(7, 2, 3)
    out, _ = lstm(x)
    torch.testing.assert_close(reglab.penalty(lstm), out.abs().sum() / 2)


def test_activity_with_text_and_both_penalty_kinds():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1))
    reglab.regularize(model[0], kernel="l2(1e-2)", activity="l1(1e-3)")
    x = torch.randn(10, 3)
    model(x)
    z = model[0](x)
    expected = 1e-2 * model[0].weight.pow(2).sum() + 1e-3 * z.abs().sum() / 10
    torch.testing.assert_close(reglab.penalty(model), expected)


def test_reattaching_activity_replaces_it():
    lin = nn.Linear(3, 2)
    reglab.regularize(lin, activity=L1(1.0))
    reglab.regularize(lin, activity=L2(1.0), activity_convention="sum")
    assert len(lin._forward_hooks) == 1
    z = lin(torch.randn(4, 3))
    torch.testing.assert_close(reglab.penalty(lin), z.pow(2).sum())


# ---------------------------------------------------------------- handles


def test_handle_remove_takes_off_exactly_its_own_attachments():
    lin = nn.Linear(4, 3)
    h1 = reglab.regularize(lin, kernel=L2(1.0), kernel_constraint=MaxNorm(1.0))
    h2 = reglab.regularize(lin, bias=L1(1.0), bias_constraint=NonNeg(), activity=L1(1.0))
    h1.remove()
    reg = registry(lin)
    assert list(reg.penalties) == ["bias"] and list(reg.constraints) == ["bias"]
    assert reg.activity == L1(1.0) and len(lin._forward_hooks) == 1
    z = lin(torch.randn(6, 4))
    torch.testing.assert_close(reglab.penalty(lin), lin.bias.abs().sum() + z.abs().sum() / 6)
    h2.remove()
    assert not reg.penalties and not reg.constraints and reg.activity is None
    assert len(lin._forward_hooks) == 0
    lin(torch.randn(6, 4))
    assert float(reglab.penalty(lin)) == 0.0
    assert list(attached(lin)) == []
    h2.remove()   # a second remove is harmless
    h1.remove()


def test_handle_remove_keeps_what_a_later_call_replaced():
    lin = nn.Linear(4, 3)
    h1 = reglab.regularize(lin, kernel=L2(1.0), kernel_constraint=MaxNorm(1.0), activity=L1(1.0))
    reglab.regularize(lin, kernel=L1(0.5), kernel_constraint=UnitNorm(), activity=L2(2.0))
    h1.remove()
    reg = registry(lin)
    assert reg.penalties == {"weight": L1(0.5)}
    assert reg.constraints == {"weight": UnitNorm()}
    assert reg.activity == L2(2.0) and len(lin._forward_hooks) == 1
    z = lin(torch.randn(3, 4))
    torch.testing.assert_close(reglab.penalty(lin), 0.5 * lin.weight.abs().sum() + 2.0 * z.pow(2).sum() / 3)


def test_remove_on_model_with_named_targets():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    keep = reglab.regularize(model[1], kernel=L2(1.0))
    h = reglab.regularize(model, penalties={"0.weight": L2(1.0)}, constraints={"0.weight": NonNeg()})
    h.remove()
    torch.testing.assert_close(reglab.penalty(model), model[1].weight.pow(2).sum())
    keep.remove()
    assert float(reglab.penalty(model)) == 0.0


# ---------------------------------------------------------------- constraints


def test_apply_constraints_projects_with_keras_formula():
    lin = nn.Linear(6, 5)
    with torch.no_grad():
        lin.weight.mul_(torch.linspace(0.1, 10, 5).view(-1, 1))
        lin.bias.fill_(-1.0)
    before = lin.weight.detach().clone()
    reglab.regularize(lin, kernel_constraint=MaxNorm(1.0), bias_constraint="non_neg")
    assert torch.equal(lin.weight, before)   # constraints project after steps, not at attach time
    reglab.apply_constraints(lin)
    np.testing.assert_allclose(lin.weight.detach().numpy(), np_max_norm_rows(before.numpy(), 1.0), rtol=2e-6,
                               atol=1e-7)
    assert bool((lin.bias == 0).all())
    assert lin.weight.requires_grad and lin.weight.is_leaf


def test_apply_constraints_on_conv_and_lstm():
    conv = nn.Conv2d(3, 4, 3)
    lstm = nn.LSTM(3, 5)
    model = nn.ModuleDict({"conv": conv, "lstm": lstm})
    with torch.no_grad():
        conv.weight.mul_(20)
    ih_before = lstm.weight_ih_l0.detach().clone()
    reglab.regularize(conv, kernel_constraint=MaxNorm(0.5))
    reglab.regularize(lstm, recurrent_constraint=UnitNorm())
    reglab.apply_constraints(model)
    assert bool((conv.weight.flatten(1).norm(dim=1) <= 0.5 + 1e-6).all())
    torch.testing.assert_close(lstm.weight_hh_l0.norm(dim=1), torch.ones(20), atol=1e-5, rtol=0)
    assert torch.equal(lstm.weight_ih_l0, ih_before)


def test_constraints_after_optimizer_step():
    lin = nn.Linear(3, 4)
    reglab.regularize(lin, kernel=L2(1e-3), kernel_constraint=MinMaxNorm(0.5, 1.0, 1.0))
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    x, y = torch.randn(16, 3), torch.randn(16, 4) * 10
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.mse_loss(lin(x), y) + reglab.penalty(lin)
        loss.backward()
        opt.step()
        reglab.apply_constraints(lin)
        norms = lin.weight.norm(dim=1)
        assert bool((norms >= 0.5 - 1e-5).all() and (norms <= 1.0 + 1e-6).all())


# ---------------------------------------------------------------- errors


def test_no_kernel_weight():
    with pytest.raises(ValueError) as info:
        reglab.regularize(nn.ReLU(), kernel=L2(1e-3))
    assert "ReLU" in str(info.value) and "kernel" in str(info.value)
    with pytest.raises(ValueError, match="kernel"):
        reglab.regularize(nn.ReLU(), kernel_constraint=MaxNorm(2))


def test_no_bias_or_recurrent_weight():
    with pytest.raises(ValueError, match="bias"):
        reglab.regularize(nn.Linear(2, 2, bias=False), bias=L2())
    with pytest.raises(ValueError, match="recurrent"):
        reglab.regularize(nn.Linear(2, 2), recurrent=L2())
    with pytest.raises(ValueError, match="kernel"):
        reglab.regularize(nn.Sequential(nn.Linear(2, 2)), kernel=L2())


def test_unknown_parameter_name():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError) as info:
        reglab.regularize(model, penalties={"0.kernel": L2()})
    assert "'0.kernel'" in str(info.value) and "0.weight" in str(info.value)
    with pytest.raises(ValueError, match="'weight'"):
        reglab.regularize(model, constraints={"weight": MaxNorm()})


@pytest.mark.parametrize("thing", [torch.randn(3, 3), "linear", None, nn.Linear])
def test_non_module(thing):
    with pytest.raises(TypeError, match="Module"):
        reglab.regularize(thing, kernel=L2())


def test_bad_arguments_leave_nothing_attached():
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError):
        reglab.regularize(lin, kernel=L2(), penalties={"nope": L1()})
    with pytest.raises(ValueError):
        reglab.regularize(lin, kernel=L2(), activity="l1(-1)")
    with pytest.raises(ValueError):
        reglab.regularize(lin, kernel=L2(), activity=L1(), activity_convention="batch")
    with pytest.raises(TypeError):
        reglab.regularize(lin, bias=L2(), kernel_constraint=3.0)
    assert list(attached(lin)) == [] and len(lin._forward_hooks) == 0
    assert float(reglab.penalty(lin)) == 0.0


def test_bad_penalty_and_constraint_values():
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="'l2'"):
        reglab.regularize(lin, kernel="l2(-1e-3)")
    with pytest.raises(TypeError):
        reglab.regularize(lin, kernel=0.01)
    with pytest.raises(ValueError, match="'max_value'"):
        reglab.regularize(lin, kernel_constraint="max_norm(nan)")
    with pytest.raises(ValueError, match="axis"):
        reglab.regularize(lin, kernel_constraint="max_norm(3, axis=1)")
    with pytest.raises(ValueError) as info:
        reglab.regularize(lin, activity=L1(), activity_convention="batch")
    assert "'activity_convention'" in str(info.value) and "'batch'" in str(info.value)


def test_l1l2_with_zero_coefficients_attaches_zero():
    lin = nn.Linear(3, 2)
    reglab.regularize(lin, kernel=L1L2())
    assert float(reglab.penalty(lin)) == 0.0
