"""Constraints against plain NumPy versions of Keras 3's formulas (eps = 1e-7, DESIGN.md §2)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

import reglab
from reglab import constraints
from reglab._parse import ParseError
from reglab.constraints import EPSILON, Lambda, MaxNorm, MinMaxNorm, NonNeg, UnitNorm

EPS = 1e-7

# ---------------------------------------------------------------- NumPy references (Keras 3)


def np_norms(w, axes):
    return np.sqrt((np.asarray(w, dtype=np.float64) ** 2).sum(axis=axes, keepdims=True))


def np_max_norm(w, max_value, axes):
    n = np_norms(w, axes)
    return w * np.clip(n, 0, max_value) / (EPS + n)


def np_unit_norm(w, axes):
    return w / (EPS + np_norms(w, axes))


def np_min_max_norm(w, min_value, max_value, rate, axes):
    n = np_norms(w, axes)
    desired = rate * np.clip(n, min_value, max_value) + (1 - rate) * n
    return w * desired / (EPS + n)


def np_non_neg(w):
    return w * (w >= 0)


def default_axes(ndim):
    """Every dim but the first (output units); a 1-D weight is one vector."""
    return tuple(range(1, ndim)) if ndim > 1 else (0,)


def reference(con, w, axes):
    if isinstance(con, MaxNorm):
        return np_max_norm(w, con.max_value, axes)
    if isinstance(con, UnitNorm):
        return np_unit_norm(w, axes)
    if isinstance(con, MinMaxNorm):
        return np_min_max_norm(w, con.min_value, con.max_value, con.rate, axes)
    return np_non_neg(w)


def _spread(w: torch.Tensor, seed=0) -> torch.Tensor:
    """Scale each output unit differently so that norms land below, inside and above any bound."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.empty(w.shape[0]).uniform_(-3, 3, generator=g))
    return w * scale.view((-1,) + (1,) * (w.dim() - 1))


def _module_weights():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5)
    gru = nn.GRU(4, 3, batch_first=True)
    return {
        "linear": nn.Linear(6, 4).weight,
        "linear_bias": nn.Linear(6, 4).bias,
        "conv1d": nn.Conv1d(3, 4, 5).weight,
        "conv2d": nn.Conv2d(3, 6, (3, 2)).weight,
        "conv2d_grouped": nn.Conv2d(4, 6, 3, groups=2).weight,
        "lstm_ih": lstm.weight_ih_l0,
        "lstm_hh": lstm.weight_hh_l0,
        "gru_ih": gru.weight_ih_l0,
    }


MODULE_WEIGHTS = {k: _spread(v.detach(), seed=i) for i, (k, v) in enumerate(_module_weights().items())}
CONSTRAINTS = [MaxNorm(2.0), MaxNorm(0.5), MaxNorm(), UnitNorm(), MinMaxNorm(0.5, 2.0, 0.5),
               MinMaxNorm(0.5, 2.0, 1.0), MinMaxNorm(), MinMaxNorm(1.0, 1.0, 0.0), NonNeg()]


# ---------------------------------------------------------------- formulas on real layouts


@pytest.mark.parametrize("name", list(MODULE_WEIGHTS))
@pytest.mark.parametrize("con", CONSTRAINTS, ids=repr)
def test_matches_numpy_on_module_weights(name, con):
    w = MODULE_WEIGHTS[name]
    got = con(w)
    assert got.shape == w.shape and got.dtype == w.dtype
    expected = reference(con, w.numpy().astype(np.float64), default_axes(w.dim()))
    np.testing.assert_allclose(got.numpy(), expected, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("con", CONSTRAINTS, ids=repr)
def test_matches_numpy_in_float64(con):
    w = _spread(torch.randn(7, 3, 2, dtype=torch.float64), seed=11)
    expected = reference(con, w.numpy(), (1, 2))
    np.testing.assert_allclose(con(w).numpy(), expected, rtol=1e-13, atol=1e-15)


def test_lstm_norm_is_per_gate_row():
    torch.manual_seed(1)
    lstm = nn.LSTM(3, 5)
    for name in ("weight_ih_l0", "weight_hh_l0"):
        w = _spread(getattr(lstm, name).detach(), seed=3).double()
        assert w.shape[0] == 4 * 5
        row_norms = w.norm(dim=1)
        out = UnitNorm()(w)
        # each gate row of each unit gets norm n / (n + eps), i.e. 1 up to eps
        torch.testing.assert_close(out.norm(dim=1), row_norms / (row_norms + EPS), rtol=1e-12, atol=0)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(20, dtype=torch.float64), atol=1e-4, rtol=0)
        capped = MaxNorm(0.3)(w)
        # each row is scaled on its own: rows inside the bound keep their norm (up to n/(n+eps))
        inside = row_norms < 0.3
        assert inside.any() and (~inside).any()
        torch.testing.assert_close(capped.norm(dim=1)[inside], row_norms[inside], rtol=1e-5, atol=1e-7)
        outside = capped.norm(dim=1)[~inside]
        torch.testing.assert_close(outside, torch.full_like(outside, 0.3), rtol=1e-5, atol=1e-7)


def test_conv2d_reduces_over_in_and_kernel_per_filter():
    # Keras's Conv2D default axis=0 reduces over the kernel height only; reglab reduces per filter.
    w = _spread(torch.randn(6, 3, 3, 2, dtype=torch.float64), seed=4)
    out = UnitNorm()(w)
    np.testing.assert_allclose(out.flatten(1).norm(dim=1).numpy(), np.ones(6), rtol=1e-6)
    assert not np.allclose(out.norm(dim=2).numpy(), 1.0)


def test_bias_is_one_vector():
    b = torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64)
    np.testing.assert_allclose(MaxNorm(1.0)(b).numpy(), np.array([0.6, 0.8, 0.0]) * 5 / (5 + EPS), rtol=1e-14)
    np.testing.assert_allclose(UnitNorm()(b).numpy(), np.array([3.0, 4.0, 0.0]) / (5 + EPS), rtol=1e-14)
    bias = nn.Linear(5, 8).bias.detach() * 10
    expected = np_min_max_norm(bias.numpy().astype(np.float64), 0.2, 0.7, 0.3, (0,))
    np.testing.assert_allclose(MinMaxNorm(0.2, 0.7, 0.3)(bias).numpy(), expected, rtol=2e-6, atol=1e-7)


def test_max_norm_shrinks_inside_the_bound():
    # w * clip(n, 0, max) / (eps + n): even a unit inside the bound is scaled by n / (n + eps).
    w = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    out = MaxNorm(2.0)(w)
    np.testing.assert_allclose(out.numpy(), w.numpy() / (1 + EPS), rtol=1e-15)
    assert not torch.equal(out, w)
    assert EPSILON == 1e-7


def test_zero_units_stay_zero():
    w = torch.zeros(3, 4)
    for con in (MaxNorm(1.0), UnitNorm(), MinMaxNorm(0.0, 1.0), NonNeg()):
        out = con(w)
        assert torch.isfinite(out).all() and bool((out == 0).all())
    # min_value > 0 cannot lift a zero unit: w * desired / (eps + 0) is still 0
    assert bool((MinMaxNorm(1.0, 2.0)(w) == 0).all())


def test_min_max_norm_lifts_and_caps():
    w = torch.tensor([[0.03, 0.04], [3.0, 4.0], [0.6, 0.8]], dtype=torch.float64)  # norms 0.05, 5, 1
    out = MinMaxNorm(0.5, 2.0, 1.0)(w)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), [0.5 * 0.05 / (0.05 + EPS), 2.0 * 5 / (5 + EPS),
                                                         1 / (1 + EPS)], rtol=1e-12)
    half = MinMaxNorm(0.5, 2.0, 0.5)(w)
    np.testing.assert_allclose(half.norm(dim=1).numpy(),
                               [(0.25 + 0.025) * 0.05 / (0.05 + EPS), 3.5 * 5 / (5 + EPS), 1 / (1 + EPS)],
                               rtol=1e-12)


def test_non_neg():
    w = torch.tensor([[-1.0, 0.0, 2.0], [3.0, -0.5, -0.0]])
    out = NonNeg()(w)
    assert out.tolist() == [[0.0, 0.0, 2.0], [3.0, 0.0, 0.0]]
    assert bool((out >= 0).all())


def test_constraints_do_not_modify_their_input():
    w = MODULE_WEIGHTS["linear"].clone()
    before = w.clone()
    for con in CONSTRAINTS:
        con(w)
    assert torch.equal(w, before)


# ---------------------------------------------------------------- dim= override


@pytest.mark.parametrize("dim,axes", [(0, (0,)), (1, (1,)), (-1, (1,)), ((0, 1), (0, 1))])
def test_dim_override_2d(dim, axes):
    w = MODULE_WEIGHTS["linear"].double()
    for con in (MaxNorm(0.7, dim=dim), UnitNorm(dim=dim), MinMaxNorm(0.3, 0.9, 0.6, dim=dim)):
        np.testing.assert_allclose(con(w).numpy(), reference(con, w.numpy(), axes), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dim,axes", [((2, 3), (2, 3)), ([1, 2, 3], (1, 2, 3)), (2, (2,)), ((-2, -1), (2, 3))])
def test_dim_override_conv(dim, axes):
    w = MODULE_WEIGHTS["conv2d"].double()
    con = MaxNorm(0.4, dim=dim)
    np.testing.assert_allclose(con(w).numpy(), np_max_norm(w.numpy(), 0.4, axes), rtol=1e-12, atol=1e-15)


def test_dim_out_of_range():
    with pytest.raises(ValueError, match="dim"):
        MaxNorm(1.0, dim=2)(torch.ones(3, 4))
    with pytest.raises(ValueError, match="dim"):
        UnitNorm(dim=-3)(torch.ones(3, 4))


@pytest.mark.parametrize("dim", ["1", 1.0, True, (), (1, "a"), (1, True), {1}])
def test_dim_bad_type(dim):
    for cls in (MaxNorm, UnitNorm, MinMaxNorm, NonNeg):
        with pytest.raises(TypeError) as info:
            cls(dim=dim)
        assert "'dim'" in str(info.value) and cls.__name__ in str(info.value)


# ---------------------------------------------------------------- per-member bounds


def _f64(values):
    return torch.tensor(values, dtype=torch.float64)


def _stacked(P, shape, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((P,) + shape, generator=g, dtype=torch.float64)
    return w * torch.exp(torch.empty(P, shape[0], *(1,) * (len(shape) - 1)).uniform_(-2, 2, generator=g)).double()


@pytest.mark.parametrize("shape", [(4, 3), (5,), (6, 3, 2), (4, 2, 3, 3)])
@pytest.mark.parametrize("make,single", [
    (lambda: MaxNorm(_f64([0.1, 1.0, 5.0])), lambda i: MaxNorm([0.1, 1.0, 5.0][i])),
    (lambda: MinMaxNorm(_f64([0.0, 0.5, 1.0]), _f64([0.5, 1.0, 3.0]), _f64([1.0, 0.5, 0.0])),
     lambda i: MinMaxNorm([0.0, 0.5, 1.0][i], [0.5, 1.0, 3.0][i], [1.0, 0.5, 0.0][i])),
    (lambda: MinMaxNorm(_f64([0.2, 0.4, 0.8]), 1.5, 0.7),
     lambda i: MinMaxNorm([0.2, 0.4, 0.8][i], 1.5, 0.7)),
])
def test_per_member_bounds_equal_per_member_scalars(shape, make, single):
    w = _stacked(3, shape, seed=len(shape))
    con = make()
    assert con.per_member
    got = con.members(w)
    expected = torch.stack([single(i)(w[i]) for i in range(3)])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(con(w), got)   # __call__ dispatches to members()


@pytest.mark.parametrize("con", [UnitNorm(), NonNeg(), MaxNorm(0.8), MinMaxNorm(0.5, 1.5, 0.5), UnitNorm(dim=0)],
                         ids=repr)
def test_members_with_scalar_bounds_project_each_member(con):
    w = _stacked(4, (5, 3), seed=9)
    expected = torch.stack([con(w[i]) for i in range(4)])
    torch.testing.assert_close(con.members(w), expected, rtol=1e-12, atol=1e-15)
    # the default (norm over all dims but 0) applied to the stacked tensor would be something else
    if not isinstance(con, NonNeg):
        assert not torch.allclose(con(w), expected)


def test_per_member_bias():
    w = _stacked(3, (6,), seed=10)
    con = MaxNorm(_f64([0.1, 1.0, 10.0]))
    got = con(w)
    for i, c in enumerate([0.1, 1.0, 10.0]):
        np.testing.assert_allclose(got[i].numpy(), np_max_norm(w[i].numpy(), c, (0,)), rtol=1e-12)


def test_per_member_bound_dtype_follows_weight():
    w = _stacked(2, (3, 3), seed=12).float()
    out = MaxNorm(torch.tensor([0.5, 1.0], dtype=torch.float64))(w)
    assert out.dtype == torch.float32
    assert MaxNorm(torch.tensor(0.5, dtype=torch.float64))(w).dtype == torch.float32


# ---------------------------------------------------------------- names, configs, parsing


def test_aliases():
    assert constraints.max_norm is MaxNorm and constraints.unit_norm is UnitNorm
    assert constraints.min_max_norm is MinMaxNorm and constraints.non_neg is NonNeg
    assert reglab.max_norm is MaxNorm and reglab.unit_norm is UnitNorm
    assert reglab.min_max_norm is MinMaxNorm and reglab.non_neg is NonNeg


def test_defaults_follow_keras3():
    assert MaxNorm().max_value == 2.0
    m = MinMaxNorm()
    assert (m.min_value, m.max_value, m.rate) == (0.0, 1.0, 1.0)
    assert MaxNorm().dim is None


@pytest.mark.parametrize("con", [
    MaxNorm(3.0), MaxNorm(1.5, dim=0), UnitNorm(), UnitNorm(dim=(1, 2)), MinMaxNorm(0.5, 2.0, 0.5), NonNeg(),
    MaxNorm(torch.tensor([1.0, 2.0])), MinMaxNorm(torch.tensor([0.0, 0.5]), 2.0, torch.tensor([1.0, 0.25])),
    MaxNorm(_f64([0.1, 0.7])), MinMaxNorm(torch.tensor([0.1, 0.2]), _f64([0.3, 0.9]), 0.3, dim=0),
], ids=repr)
def test_config_round_trip(con):
    config = con.get_config()
    again = type(con).from_config(config)
    assert again == con
    assert again.per_member == con.per_member
    w = _stacked(2, (4, 3), seed=13)
    torch.testing.assert_close(again(w), con(w))
    assert constraints.get({"class_name": type(con).__name__, "config": config}) == con


def test_config_contents_and_repr():
    assert MaxNorm(3).get_config() == {"max_value": 3.0, "dim": None}
    assert MinMaxNorm(0.5, 2, 0.5, dim=1).get_config() == {"min_value": 0.5, "max_value": 2.0, "rate": 0.5,
                                                           "dim": [1]}
    assert repr(MaxNorm(3)) == "MaxNorm(max_value=3.0)"
    assert repr(UnitNorm()) == "UnitNorm()"
    assert repr(UnitNorm(dim=0)) == "UnitNorm(dim=[0])"
    assert MaxNorm(3) != MaxNorm(2) and MaxNorm(2) != MinMaxNorm(0, 2) and UnitNorm() != UnitNorm(dim=0)


@pytest.mark.parametrize("text,expected", [
    ("max_norm(3)", MaxNorm(3.0)),
    ("max_norm(max_value=3)", MaxNorm(3.0)),
    ("max_norm(3, axis=0)", MaxNorm(3.0)),
    ("MaxNorm(max_value=2, axis=0)", MaxNorm(2.0)),
    ("maxnorm(2)", MaxNorm(2.0)),
    ("max_norm", MaxNorm(2.0)),
    ("keras.constraints.max_norm(1.5)", MaxNorm(1.5)),
    ("unit_norm", UnitNorm()),
    ("unit_norm()", UnitNorm()),
    ("UnitNorm(axis=0)", UnitNorm()),
    ("min_max_norm(min_value=0.5, max_value=2, rate=0.5)", MinMaxNorm(0.5, 2.0, 0.5)),
    ("MinMaxNorm(0.5, 2.0, 0.5, axis=0)", MinMaxNorm(0.5, 2.0, 0.5)),
    ("min_max_norm", MinMaxNorm()),
    ("min_max_norm(0.5, 2.0, 0.5, 0)", MinMaxNorm(0.5, 2.0, 0.5)),   # Keras's positional axis=0
    ("unit_norm(0)", UnitNorm()),
    ("max_norm(3, 0)", MaxNorm(3.0)),
    ("max_norm(3, dim=0)", MaxNorm(3.0, dim=0)),                    # reglab's own dim= by name
    ("non_neg", NonNeg()),
    ("NonNeg()", NonNeg()),
    ("tf.keras.constraints.NonNeg", NonNeg()),
])
def test_parse_text(text, expected):
    got = constraints.get(text)
    assert type(got) is type(expected)
    assert got == expected


@pytest.mark.parametrize("text", ["max_norm(3, axis=1)", "max_norm(3, axis=-1)", "unit_norm(axis=[0, 1, 2])",
                                  "unit_norm(1)", "max_norm(3, 1)", "min_max_norm(0.5, 2, 1, 1)", "non_neg(2)",
                                  "unit_norm(axis=(0, 1))", "min_max_norm(0.5, 2, axis=2)"])
def test_parse_refuses_other_axis(text):
    with pytest.raises(ValueError) as info:
        constraints.get(text)
    message = str(info.value)
    assert "axis" in message and "dim" in message


@pytest.mark.parametrize("text", [
    "max_norm(3)+1", "max_norm(x=lambda: 1)", "max_norm(__import__('os'))", "__import__('os').system('ls')",
    "max_norm(-1)", "max_norm(nan)", "max_norm('3')", "max_norm(3, 4, 5)", "max_norm(foo=1)", "dropout(0.5)",
    "min_max_norm(min_value=2, max_value=1)", "min_max_norm(rate=2)", "unit_norm(1)", "max_norm(True)",
    "max_norm(3, 0, 1)", "max_norm(3, 0, axis=0)", "non_neg(0, 0)",
    "max_norm(3) max_norm(4)", "",
])
def test_parse_rejects(text):
    with pytest.raises((ValueError, TypeError)):
        constraints.get(text)


def test_parse_errors_are_specific(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ParseError, match="only plain names"):
        constraints.get(f"__import__('os').system('touch {marker}')")
    with pytest.raises(ValueError, match="Unknown constraint '__import__'"):
        constraints.get(f"__import__('os')")
    assert not marker.exists()
    with pytest.raises(ParseError):
        constraints.get("max_norm(3)+1")
    with pytest.raises(ParseError):
        constraints.get("max_norm(foo)")
    with pytest.raises(TypeError, match="max_norm"):
        constraints.get("max_norm(3, 4, 5)")
    with pytest.raises(ValueError, match="'max_value' parameter of MaxNorm"):
        constraints.get("max_norm(-1)")


def test_get_passes_through_and_builds():
    con = MaxNorm(1.0)
    assert constraints.get(con) is con
    assert constraints.get(None) is None
    assert constraints.get(UnitNorm) == UnitNorm()
    assert constraints.get({"class_name": "MaxNorm", "config": {"max_value": 3}}) == MaxNorm(3)
    assert constraints.get({"class_name": "non_neg"}) == NonNeg()
    with pytest.raises(ValueError, match="class_name"):
        constraints.get({"max_value": 3})
    with pytest.raises(ValueError, match="Unknown constraint"):
        constraints.get({"class_name": "Clip", "config": {}})
    with pytest.raises(TypeError, match="constraint"):
        constraints.get(3.0)


def test_callable_becomes_lambda():
    con = constraints.get(lambda w: w.clamp(-1, 1))
    assert isinstance(con, Lambda)
    w = torch.tensor([[-3.0, 0.5], [2.0, -0.25]])
    assert con(w).tolist() == [[-1.0, 0.5], [1.0, -0.25]]
    torch.testing.assert_close(con.members(torch.stack([w, 2 * w])), torch.stack([con(w), con(2 * w)]))


# ---------------------------------------------------------------- invalid arguments

BAD_VALUES = [
    (-1, ValueError, "-1"),
    (float("nan"), ValueError, "nan"),
    (float("inf"), ValueError, "inf"),
    (True, TypeError, "True"),
    ("2", TypeError, "'2'"),
    (None, TypeError, "None"),
    (torch.ones(2, 2), ValueError, "(2, 2)"),
    (torch.tensor([1.0, -1.0]), ValueError, "-1.0"),
    (torch.tensor([1.0, float("nan")]), ValueError, "nan"),
]


@pytest.mark.parametrize("cls,param", [(MaxNorm, "max_value"), (MinMaxNorm, "min_value"),
                                       (MinMaxNorm, "max_value"), (MinMaxNorm, "rate")],
                         ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("value,error,shown", BAD_VALUES)
def test_bad_bounds(cls, param, value, error, shown):
    kwargs = {param: value}
    if cls is MinMaxNorm and param == "min_value":
        kwargs["max_value"] = 10.0
    with pytest.raises(error) as info:
        cls(**kwargs)
    message = str(info.value)
    assert f"'{param}'" in message and cls.__name__ in message and shown in message


@pytest.mark.parametrize("rate", [1.5, 1.0000001, torch.tensor([0.5, 2.0])])
def test_min_max_norm_rate_above_one(rate):
    with pytest.raises(ValueError) as info:
        MinMaxNorm(0.0, 1.0, rate)
    assert "'rate'" in str(info.value) and "[0, 1]" in str(info.value)


@pytest.mark.parametrize("lo,hi", [(2.0, 1.0), (torch.tensor([0.5, 3.0]), torch.tensor([1.0, 2.0])),
                                   (torch.tensor([0.5, 3.0]), 2.0)])
def test_min_max_norm_min_above_max(lo, hi):
    with pytest.raises(ValueError) as info:
        MinMaxNorm(lo, hi)
    assert "'min_value'" in str(info.value) and "max_value" in str(info.value)


def test_min_max_norm_edges_allowed():
    MinMaxNorm(1.0, 1.0, 0.0)
    MinMaxNorm(0.0, 0.0, 1.0)
    assert bool((MaxNorm(0.0)(torch.randn(3, 3)) == 0).all())


# ---------------------------------------------------------------- properties

away_from_zero = st.floats(0.01, 100, width=64) | st.floats(-100, -0.01, width=64)
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
shapes = hnp.array_shapes(min_dims=1, max_dims=4, max_side=5)


@settings(max_examples=50, deadline=None)
@given(w=hnp.arrays(np.float64, shapes, elements=finite), c=st.floats(0.0, 50.0))
def test_max_norm_caps_every_norm(w, c):
    t = torch.from_numpy(w)
    out = MaxNorm(c)(t)
    axes = default_axes(t.dim())
    assert bool((out.square().sum(axes).sqrt() <= c * (1 + 1e-12) + 1e-12).all())
    np.testing.assert_allclose(out.numpy(), np_max_norm(w, c, axes), rtol=1e-12, atol=1e-300)


@settings(max_examples=50, deadline=None)
@given(w=hnp.arrays(np.float64, shapes, elements=finite))
def test_non_neg_outputs_are_non_negative(w):
    out = NonNeg()(torch.from_numpy(w))
    assert bool((out >= 0).all())
    np.testing.assert_array_equal(out.numpy(), np.maximum(w, 0))


@settings(max_examples=50, deadline=None)
@given(w=hnp.arrays(np.float64, shapes, elements=away_from_zero))
def test_unit_norm_gives_unit_norms_and_is_idempotent(w):
    t = torch.from_numpy(w)
    axes = default_axes(t.dim())
    once = UnitNorm()(t)
    np.testing.assert_allclose(once.square().sum(axes).sqrt().numpy(), 1.0, rtol=0, atol=1e-5)
    twice = UnitNorm()(once)
    # the second pass rescales by n / (n + eps) / (n / (n + eps) + eps): a relative change of at most
    # eps / n <= 1e-5 for the norms >= 0.01 drawn here
    np.testing.assert_allclose(twice.numpy(), once.numpy(), rtol=1.1e-5, atol=0)
    np.testing.assert_allclose(once.numpy(), np_unit_norm(w, axes), rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(w=hnp.arrays(np.float64, shapes, elements=away_from_zero),
       lo=st.floats(0.0, 5.0), width=st.floats(0.0, 5.0), rate=st.floats(0.0, 1.0))
def test_min_max_norm_moves_norms_toward_the_interval(w, lo, width, rate):
    t = torch.from_numpy(w)
    axes = default_axes(t.dim())
    hi = lo + width
    out = MinMaxNorm(lo, hi, rate)(t)
    np.testing.assert_allclose(out.numpy(), np_min_max_norm(w, lo, hi, rate, axes), rtol=1e-12)
    n = np_norms(w, axes).squeeze()
    n_out = out.square().sum(axes).sqrt().numpy()
    target = np.clip(n, lo, hi)
    # the new norm lies between the old norm and its clipped value (rate interpolates)
    assert np.all(n_out <= np.maximum(n, target) * (1 + 1e-9))
    assert np.all(n_out >= np.minimum(n, target) * (1 - 1e-5))
