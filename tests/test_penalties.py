"""Penalties against plain NumPy versions of Keras 3's formulas (DESIGN.md §2)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reglab
from reglab import penalties
from reglab._parse import ParseError, parse_call
from reglab.penalties import L1, L1L2, L2, Custom, Orthogonal

# ---------------------------------------------------------------- NumPy references (Keras 3)


def np_l1(w, l1):
    return l1 * np.abs(w).sum()


def np_l2(w, l2):
    return l2 * (w ** 2).sum()


def np_orthogonal(w, factor, mode):
    """keras.regularizers.OrthogonalRegularizer on the 2-D array as given."""
    x = np.asarray(w, dtype=np.float64)
    if mode == "columns":
        x = x.T
    norm = np.sqrt((x ** 2).sum(axis=1, keepdims=True))
    x = x / np.maximum(norm, 1e-7)
    n = x.shape[0]
    product = x @ x.T
    off = product * (1.0 - np.eye(n))
    return factor * 0.5 * np.abs(off).sum() / (n * (n - 1) / 2)


SHAPES = [(5,), (4, 3), (2, 3, 4), (3, 2, 3, 3)]


def _weight(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype) * 1.7


# ---------------------------------------------------------------- formulas


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("coef", [0.0, 1e-3, 0.01, 2.5])
def test_l1_matches_numpy(shape, coef):
    w = _weight(shape)
    got = L1(coef)(w)
    assert got.shape == ()
    assert float(got) == pytest.approx(np_l1(w.numpy(), coef), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("coef", [0.0, 1e-3, 0.01, 2.5])
def test_l2_matches_numpy(shape, coef):
    w = _weight(shape, seed=1)
    got = L2(coef)(w)
    assert got.shape == ()
    assert float(got) == pytest.approx(np_l2(w.numpy(), coef), rel=1e-12, abs=1e-15)


def test_l2_has_no_half_factor():
    assert float(L2(1.0)(torch.tensor([1.0, 1.0, 1.0]))) == 3.0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (1e-5, 1e-4), (0.3, 0.0), (0.0, 0.7), (0.2, 0.9)])
def test_l1l2_matches_numpy(shape, l1, l2):
    w = _weight(shape, seed=2)
    expected = np_l1(w.numpy(), l1) + np_l2(w.numpy(), l2)
    assert float(L1L2(l1=l1, l2=l2)(w)) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_defaults_follow_keras3():
    assert L1().l1 == 0.01
    assert L2().l2 == 0.01
    assert (L1L2().l1, L1L2().l2) == (0.0, 0.0)
    assert float(L1L2()(torch.ones(3))) == 0.0
    assert Orthogonal().factor == 0.01
    assert Orthogonal().mode == "rows"


@pytest.mark.parametrize("mode", ["rows", "columns"])
@pytest.mark.parametrize("shape", [(2, 2), (5, 3), (3, 7), (6, 6)])
@pytest.mark.parametrize("factor", [0.01, 1.0, 3.0])
def test_orthogonal_matches_numpy(mode, shape, factor):
    w = _weight(shape, seed=3)
    got = Orthogonal(factor, mode=mode)(w)
    assert got.shape == ()
    assert float(got) == pytest.approx(np_orthogonal(w.numpy(), factor, mode), rel=1e-10, abs=1e-15)


@pytest.mark.parametrize("mode", ["rows", "columns"])
def test_orthogonal_zero_vector_is_not_nan(mode):
    # x / max(||x||, 1e-7): an all-zero row (or column) stays zero instead of dividing by zero.
    w = _weight((4, 4), seed=4)
    if mode == "rows":
        w[1] = 0.0
    else:
        w[:, 2] = 0.0
    got = Orthogonal(1.0, mode=mode)(w)
    assert torch.isfinite(got)
    assert float(got) == pytest.approx(np_orthogonal(w.numpy(), 1.0, mode), rel=1e-10)


def test_orthogonal_normalisation_uses_1e_minus_7_floor():
    # Rows with norm below 1e-7 are divided by 1e-7, not by their norm.
    w = torch.tensor([[1e-9, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    expected = np_orthogonal(w.numpy(), 1.0, "rows")
    assert float(Orthogonal(1.0)(w)) == pytest.approx(expected, rel=1e-10)
    # With the floor the tiny row contributes |1e-9 / 1e-7| = 0.01 against row 1 (not 1.0).
    assert expected == pytest.approx(0.5 * 2 * 0.01 / 3, rel=1e-10)


def test_orthogonal_known_values():
    assert float(Orthogonal(1.0)(torch.eye(4))) == 0.0
    assert float(Orthogonal(1.0)(torch.ones(3, 2))) == pytest.approx(1.0)
    # rows vs columns differ on a non-square weight
    w = _weight((5, 3), seed=5)
    assert float(Orthogonal(1.0, "rows")(w)) != pytest.approx(float(Orthogonal(1.0, "columns")(w)))
    assert float(Orthogonal(1.0, "rows")(w)) == pytest.approx(float(Orthogonal(1.0, "columns")(w.T)))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_orthogonal_rejects_non_2d(shape):
    with pytest.raises(ValueError, match="2-D"):
        Orthogonal(0.1)(torch.ones(shape))


def test_penalties_are_differentiable():
    w = _weight((4, 3), seed=6).requires_grad_()
    L1L2(l1=0.3, l2=0.5)(w).backward()
    expected = 0.3 * torch.sign(w.detach()) + 2 * 0.5 * w.detach()
    torch.testing.assert_close(w.grad, expected)


def test_result_dtype_follows_weight():
    w32 = _weight((3, 3), dtype=torch.float32)
    assert L2(0.1)(w32).dtype == torch.float32
    assert L2(torch.tensor(0.1, dtype=torch.float64))(w32).dtype == torch.float32
    w64 = _weight((3, 3))
    assert L1(torch.tensor([0.1, 0.2], dtype=torch.float32)).members(torch.stack([w64, w64])).dtype == torch.float64


# ---------------------------------------------------------------- per-member coefficients


def _members(cls, coefs: dict, P, shape, seed=7, **extra):
    w = _weight((P,) + shape, seed=seed)
    tensor_coefs = {k: torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else v for k, v in coefs.items()}
    stacked = cls(**tensor_coefs, **extra)
    singles = []
    for i in range(P):
        single = {k: (v[i] if isinstance(v, list) else v) for k, v in coefs.items()}
        singles.append(float(cls(**single, **extra)(w[i])))
    return stacked, w, singles


@pytest.mark.parametrize("shape", [(6,), (4, 3), (2, 3, 2)])
@pytest.mark.parametrize("cls,coefs", [
    (L1, {"l1": [0.0, 1e-3, 0.5]}),
    (L2, {"l2": [1e-4, 0.0, 2.0]}),
    (L1L2, {"l1": [0.1, 0.0, 1e-3], "l2": [0.0, 0.2, 3.0]}),
    (L1L2, {"l1": [0.1, 0.0, 1e-3], "l2": 0.25}),
    (L1L2, {"l1": 0.0, "l2": [0.5, 0.0, 1e-2]}),
])
def test_per_member_coefficients_equal_per_member_scalars(shape, cls, coefs):
    stacked, w, singles = _members(cls, coefs, 3, shape)
    assert stacked.per_member
    got = stacked(w)          # __call__ dispatches to members() for per-member coefficients
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), singles, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(stacked.members(w), got)


@pytest.mark.parametrize("mode", ["rows", "columns"])
def test_orthogonal_per_member(mode):
    stacked, w, singles = _members(Orthogonal, {"factor": [0.01, 1.0, 0.0, 4.0]}, 4, (5, 3), mode=mode)
    got = stacked(w)
    assert got.shape == (4,)
    np.testing.assert_allclose(got.numpy(), singles, rtol=1e-10, atol=1e-15)
    expected = [np_orthogonal(w[i].numpy(), f, mode) for i, f in enumerate([0.01, 1.0, 0.0, 4.0])]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-15)


def test_members_with_scalar_coefficient_gives_one_value_per_member():
    w = _weight((3, 4, 2), seed=8)
    got = L2(0.1).members(w)
    np.testing.assert_allclose(got.numpy(), [np_l2(w[i].numpy(), 0.1) for i in range(3)], rtol=1e-12)
    # but called directly, a scalar coefficient sums the whole tensor
    assert float(L2(0.1)(w)) == pytest.approx(np_l2(w.numpy(), 0.1), rel=1e-12)


def test_zero_dim_tensor_and_numpy_coefficients():
    w = _weight((4, 3), seed=9)
    p = L2(torch.tensor(0.3))
    assert not p.per_member
    assert float(p(w)) == pytest.approx(np_l2(w.numpy(), 0.3), rel=1e-6)
    q = L1(np.array([0.1, 0.2]))
    assert q.per_member and isinstance(q.l1, torch.Tensor)
    np.testing.assert_allclose(q(torch.stack([w, w])).numpy(), [np_l1(w.numpy(), 0.1), np_l1(w.numpy(), 0.2)],
                               rtol=1e-6)
    assert L1(np.float32(0.5)).l1 == 0.5
    assert L2(3).l2 == 3.0 and isinstance(L2(3).l2, float)


def test_int_tensor_coefficient_becomes_float():
    p = L2(torch.tensor([1, 2]))
    assert p.l2.is_floating_point()
    w = torch.ones(2, 3)
    torch.testing.assert_close(p(w), torch.tensor([3.0, 6.0]))


# ---------------------------------------------------------------- names, configs, repr


def test_aliases():
    assert penalties.l1 is L1 and penalties.l2 is L2 and penalties.l1_l2 is L1L2
    assert penalties.orthogonal is Orthogonal and penalties.orthogonal_regularizer is Orthogonal
    assert reglab.l1 is L1 and reglab.l2 is L2 and reglab.l1_l2 is L1L2 and reglab.orthogonal is Orthogonal
    assert reglab.l2(1e-3) == L2(1e-3)


@pytest.mark.parametrize("pen", [
    L1(0.3), L2(1e-4), L1L2(l1=1e-5, l2=1e-4), L1L2(), Orthogonal(0.2, mode="columns"), Orthogonal(),
])
def test_config_round_trip(pen):
    config = pen.get_config()
    again = type(pen).from_config(config)
    assert again == pen
    assert again.get_config() == config
    w = _weight((4, 4), seed=10)
    assert float(again(w)) == float(pen(w))
    # and through get() with Keras's {"class_name", "config"} dict
    assert penalties.get({"class_name": type(pen).__name__, "config": config}) == pen


def test_config_contents():
    assert L1(0.3).get_config() == {"l1": 0.3}
    assert L2(0.5).get_config() == {"l2": 0.5}
    assert L1L2(l1=0.1, l2=0.2).get_config() == {"l1": 0.1, "l2": 0.2}
    assert Orthogonal(0.2, "columns").get_config() == {"factor": 0.2, "mode": "columns"}


@pytest.mark.parametrize("pen", [
    L1(torch.tensor([0.5, 0.25])), L2(torch.tensor([0.0, 1.0, 2.0])),
    L1L2(l1=torch.tensor([0.5, 0.25]), l2=0.125), Orthogonal(torch.tensor([1.0, 2.0]), "columns"),
    L2(torch.tensor([0.1, 1e-3], dtype=torch.float64)), L1(torch.tensor([0.1, 0.3], dtype=torch.float32)),
])
def test_per_member_config_round_trip(pen):
    config = pen.get_config()
    again = type(pen).from_config(config)
    assert again == pen
    assert again.per_member
    w = _weight((len(config[pen.coefficients[0]]) if isinstance(config[pen.coefficients[0]], list) else 2, 3, 3),
                seed=11, dtype=torch.float32)
    torch.testing.assert_close(again(w), pen(w))


def test_equality_and_repr():
    assert L2(0.01) == L2(0.01)
    assert L2(0.01) != L2(0.02)
    assert L1(0.01) != L2(0.01)
    assert Orthogonal(0.1, "rows") != Orthogonal(0.1, "columns")
    assert repr(L2(0.01)) == "L2(l2=0.01)"
    assert repr(L1L2(l1=1e-5, l2=1e-4)) == "L1L2(l1=1e-05, l2=0.0001)"
    assert repr(Orthogonal(0.5)) == "Orthogonal(factor=0.5, mode='rows')"
    assert eval(repr(L1L2(l1=0.1, l2=0.2)), {"L1L2": L1L2}) == L1L2(l1=0.1, l2=0.2)


# ---------------------------------------------------------------- parsing text


@pytest.mark.parametrize("text,expected", [
    ("l2(1e-3)", L2(1e-3)),
    ("l2(l2=1e-3)", L2(1e-3)),
    ("L2(0.01)", L2(0.01)),
    ("l1(0.5)", L1(0.5)),
    ("L1(l1=2)", L1(2.0)),
    ("l1_l2(l1=1e-5, l2=1e-4)", L1L2(l1=1e-5, l2=1e-4)),
    ("L1L2(l1=0.1, l2=0.2)", L1L2(l1=0.1, l2=0.2)),
    ("l1_l2(0.3)", L1L2(l1=0.3, l2=0.0)),
    ("l1_l2()", L1L2(l1=0.0, l2=0.0)),
    ("l1_l2", L1L2(l1=0.01, l2=0.01)),
    ("l2", L2(0.01)),
    ("l1", L1(0.01)),
    ("L2()", L2(0.01)),
    ("  l2( 1e-3 )  ", L2(1e-3)),
    ("l2(+0.5)", L2(0.5)),
    ("l2(0)", L2(0.0)),
    ("keras.regularizers.l2(0.01)", L2(0.01)),
    ("tf.keras.regularizers.L1L2(l1=0.1)", L1L2(l1=0.1)),
    ("keras.regularizers.l1_l2", L1L2(l1=0.01, l2=0.01)),
    ("orthogonal", Orthogonal()),
    ("orthogonal_regularizer(factor=0.1, mode='columns')", Orthogonal(0.1, "columns")),
    ("OrthogonalRegularizer(0.2)", Orthogonal(0.2)),
])
def test_parse_text(text, expected):
    got = penalties.get(text)
    assert type(got) is type(expected)
    assert got == expected


def test_get_passes_through_and_builds():
    pen = L2(0.1)
    assert penalties.get(pen) is pen
    assert penalties.get(None) is None
    assert penalties.get(L2) == L2()
    assert penalties.get(L1L2) == L1L2()
    assert penalties.get({"class_name": "L1", "config": {"l1": 0.001}}) == L1(0.001)
    assert penalties.get({"class_name": "l1_l2", "config": {"l1": 0.1, "l2": 0.2}}) == L1L2(l1=0.1, l2=0.2)
    assert penalties.get({"class_name": "L2"}) == L2()


def test_get_bad_identifiers():
    with pytest.raises(TypeError, match="penalty"):
        penalties.get(0.01)
    with pytest.raises(TypeError):
        penalties.get([0.01])
    with pytest.raises(ValueError, match="class_name"):
        penalties.get({"l2": 0.01})
    with pytest.raises(ValueError, match="Unknown penalty"):
        penalties.get({"class_name": "Dropout", "config": {}})


@pytest.mark.parametrize("text", [
    "__import__('os').system('{cmd}')",
    "l2(__import__('os').system('{cmd}'))",
    "l2(l2=__import__('os').system('{cmd}'))",
    "exec(\"__import__('os').system('{cmd}')\")",
    "eval(\"__import__('os').system('{cmd}')\")",
    "l2(1e-3); __import__('os').system('{cmd}')",
    "(lambda: __import__('os').system('{cmd}'))()",
    "[__import__('os').system('{cmd}')][0]",
    "l2(1e-3) if __import__('os').system('{cmd}') else l1(1)",
    "getattr(__import__('os'), 'system')('{cmd}')",
])
def test_parse_never_executes(text, tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises((ValueError, TypeError)):
        penalties.get(text.format(cmd=f"touch {marker}"))
    assert not marker.exists()


@pytest.mark.parametrize("text", [
    "l2(1e-3)+1",
    "l2(1e-3) * 2",
    "l2(x=lambda: 1)",
    "l2(lambda: 1)",
    "l2(1e-3)(2)",
    "l2(*[1e-3])",
    "l2(**{'l2': 1e-3})",
    "l2(1 + 2)",
    "l2([1e-3])",
    "l2(l2)",
    "l2(foo)",
    "[l2(1)]",
    "'l2'",
    "1e-3",
    "",
    "l2(",
    "l2(1e-3) l1(1)",
    "dropout(0.5)",
    "l3(1)",
    "os.system",
    "l2(-1)",
    "l2(nan)",
    "l2(inf)",
    "l2(-inf)",
    "l2(1, 2)",
    "l2(foo=1)",
    "l2(True)",
    "l2('0.1')",
    "l2(None)",
    "l1_l2(l1=-1e-5)",
    "orthogonal(mode='diagonal')",
])
def test_parse_rejects(text):
    with pytest.raises((ValueError, TypeError)):
        penalties.get(text)


def test_parse_errors_are_specific():
    with pytest.raises(ParseError):
        penalties.get("l2(1e-3)+1")
    with pytest.raises(ParseError):
        penalties.get("l2(x=lambda: 1)")
    with pytest.raises(ParseError, match="foo"):
        penalties.get("l2(foo)")
    with pytest.raises(ValueError, match="Unknown penalty 'l3'"):
        penalties.get("l3(1)")
    with pytest.raises(ValueError, match="Unknown penalty '__import__'"):
        penalties.get("__import__('os')")
    with pytest.raises(TypeError, match="l2"):
        penalties.get("l2(1, 2)")
    with pytest.raises(TypeError, match="foo"):
        penalties.get("l2(foo=1)")
    with pytest.raises(ValueError, match="'l2' parameter of L2"):
        penalties.get("l2(-1)")
    with pytest.raises(TypeError, match="'l2' parameter of L2"):
        penalties.get("l2(True)")
    with pytest.raises(TypeError, match="string"):
        parse_call(3)  # type: ignore[arg-type]
    assert issubclass(ParseError, ValueError)


# ---------------------------------------------------------------- custom penalties


def test_custom_callable():
    def row_sum_sq(w):
        return 0.5 * w.sum(dim=-1).square().sum()

    pen = penalties.get(row_sum_sq)
    assert isinstance(pen, Custom)
    w = _weight((3, 4), seed=12)
    assert float(pen(w)) == pytest.approx(0.5 * (w.numpy().sum(axis=1) ** 2).sum(), rel=1e-12)
    stacked = torch.stack([w, 2 * w])
    np.testing.assert_allclose(pen.members(stacked).numpy(), [float(pen(w)), float(pen(2 * w))], rtol=1e-12)
    assert "row_sum_sq" in repr(pen)
    assert pen.get_config()["fn"].endswith("row_sum_sq")


def test_custom_lambda_and_bad_custom():
    pen = penalties.get(lambda w: w.abs().max())
    assert float(pen(torch.tensor([1.0, -3.0]))) == 3.0
    with pytest.raises(TypeError, match="callable"):
        Custom(3)


# ---------------------------------------------------------------- invalid arguments


PARAMS = [(L1, "l1"), (L2, "l2"), (L1L2, "l1"), (L1L2, "l2"), (Orthogonal, "factor")]

BAD_VALUES = [
    (-1, ValueError, "-1"),
    (-1e-9, ValueError, "-1e-09"),
    (float("nan"), ValueError, "nan"),
    (float("inf"), ValueError, "inf"),
    (float("-inf"), ValueError, "-inf"),
    (np.float64("nan"), ValueError, "nan"),
    (True, TypeError, "True"),
    (np.bool_(False), TypeError, "False"),
    ("0.01", TypeError, "'0.01'"),
    (None, TypeError, "None"),
    ([0.1, 0.2], TypeError, "[0.1, 0.2]"),
    (1 + 2j, TypeError, "(1+2j)"),
    (torch.ones(2, 2), ValueError, "(2, 2)"),
    (torch.ones(2, 1, 1), ValueError, "(2, 1, 1)"),
    (np.ones((3, 2)), ValueError, "(3, 2)"),
    (torch.tensor([0.1, -0.1]), ValueError, "-0.1"),
    (torch.tensor([0.1, float("nan")]), ValueError, "nan"),
    (torch.tensor([float("inf")]), ValueError, "inf"),
    (torch.tensor(-2.0), ValueError, "-2.0"),
    (torch.tensor([True, False]), TypeError, "bool"),
]


@pytest.mark.parametrize("cls,param", PARAMS, ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("value,error,shown", BAD_VALUES)
def test_bad_coefficients(cls, param, value, error, shown):
    with pytest.raises(error) as info:
        cls(**{param: value})
    message = str(info.value)
    assert f"'{param}'" in message
    assert cls.__name__ in message
    assert shown in message


@pytest.mark.parametrize("mode", ["diag", "Rows", None, 0])
def test_orthogonal_bad_mode(mode):
    with pytest.raises(ValueError) as info:
        Orthogonal(0.1, mode=mode)
    assert "'mode'" in str(info.value) and "'rows'" in str(info.value) and repr(mode) in str(info.value)


# ---------------------------------------------------------------- properties

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
weights = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), elements=finite)
coefficient = st.floats(0, 10, allow_nan=False, allow_infinity=False)


@settings(max_examples=50, deadline=None)
@given(w=weights, a=coefficient, b=coefficient)
def test_penalties_are_non_negative_and_match_numpy(w, a, b):
    t = torch.from_numpy(w)
    for pen, expected in ((L1(a), np_l1(w, a)), (L2(b), np_l2(w, b)),
                          (L1L2(l1=a, l2=b), np_l1(w, a) + np_l2(w, b))):
        value = float(pen(t))
        assert value >= 0
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(w=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=6), elements=finite),
       factor=coefficient, mode=st.sampled_from(["rows", "columns"]))
def test_orthogonal_is_between_zero_and_factor(w, factor, mode):
    value = float(Orthogonal(factor, mode)(torch.from_numpy(w)))
    assert math.isfinite(value)
    assert 0 <= value <= factor * (1 + 1e-9) + 1e-12
    assert value == pytest.approx(np_orthogonal(w, factor, mode), rel=1e-9, abs=1e-12)
