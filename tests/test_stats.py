"""Statistics against SciPy and hand computations (DESIGN.md §5)."""

import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats as sp

from reglab.stats import choose_decade, describe, ensemble_accuracy, holm, one_se_rule, paired, refine_grid, verdict

NAN = float("nan")
FAST = settings(max_examples=60, deadline=None)

scores = st.floats(-1e3, 1e3, allow_nan=False, width=64)
probabilities = st.floats(0.0, 1.0, allow_nan=False, width=64)


@pytest.fixture
def strict():
    """Any warning (NumPy's RuntimeWarning, SciPy's precision loss) fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---------------------------------------------------------------- describe


def test_describe_matches_scipy():
    x = np.array([0.81, 0.86, 0.84, 0.90, 0.79, 0.88])
    r = describe(x)
    low, high = sp.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sp.sem(x))
    assert r["n"] == 6
    assert r["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert r["std"] == pytest.approx(np.std(x, ddof=1), rel=1e-12)
    assert r["sem"] == pytest.approx(sp.sem(x), rel=1e-12)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((low, high), rel=1e-12)


def test_describe_by_hand():
    # values 1, 2, 3: mean 2, std 1, sem 1/sqrt(3); with 2 degrees of freedom the t quantile
    # has the closed form t_p = (2p - 1) / sqrt(2p(1 - p)), p = 0.975
    r = describe([1, 2, 3])
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)
    assert (r["mean"], r["std"]) == pytest.approx((2.0, 1.0))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((2 - half, 2 + half), rel=1e-12)


def test_describe_drops_nan_and_inf(strict):
    r = describe([0.8, NAN, 0.9, float("inf"), 0.7, -float("inf")])
    assert r == pytest.approx(describe([0.8, 0.9, 0.7]))
    assert r["n"] == 3


def test_describe_one_value(strict):
    r = describe([0.75, NAN])
    assert r["n"] == 1 and r["mean"] == 0.75
    assert all(math.isnan(r[key]) for key in ("std", "sem", "ci_low", "ci_high"))


def test_describe_no_value(strict):
    for values in ([], [NAN, NAN]):
        r = describe(values)
        assert r["n"] == 0
        assert all(math.isnan(r[key]) for key in ("mean", "std", "sem", "ci_low", "ci_high"))


def test_describe_identical_values(strict):
    r = describe([0.5] * 7)
    assert (r["mean"], r["std"], r["ci_low"], r["ci_high"]) == (0.5, 0.0, 0.5, 0.5)


@FAST
@given(hnp.arrays(np.float64, st.integers(2, 40), elements=scores))
def test_describe_interval_contains_mean_and_matches_scipy(x):
    r = describe(x)
    assert r["ci_low"] <= r["mean"] <= r["ci_high"]
    assert r["sem"] == pytest.approx(sp.sem(x), rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------- paired


VARIANT = np.array([0.91, 0.88, 0.93, 0.90, 0.87, 0.92, 0.89, 0.90])
BASELINE = np.array([0.86, 0.88, 0.90, 0.91, 0.84, 0.87, 0.88, 0.85])


def test_paired_matches_scipy_ttest_rel():
    r = paired(VARIANT, BASELINE)
    d = VARIANT - BASELINE
    test = sp.ttest_rel(VARIANT, BASELINE)
    low, high = sp.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sp.sem(d))
    assert r["n"] == 8
    assert r["mean_diff"] == pytest.approx(d.mean(), rel=1e-12)
    assert r["std_diff"] == pytest.approx(d.std(ddof=1), rel=1e-12)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((low, high), rel=1e-12)
    assert r["p_value"] == pytest.approx(test.pvalue, rel=1e-10)
    assert r["p_better"] == pytest.approx(sp.t.cdf(test.statistic, len(d) - 1), rel=1e-12)
    # differences +.05 0 +.03 -.01 +.03 +.05 +.01 +.05: six wins, one loss, one tie
    assert (r["wins"], r["losses"], r["ties"]) == (6, 1, 1)


def test_paired_lower_is_better_mirrors():
    high = paired(VARIANT, BASELINE)
    low = paired(VARIANT, BASELINE, higher_is_better=False)
    assert low["p_better"] == pytest.approx(1 - high["p_better"], rel=1e-12)
    assert low["p_value"] == high["p_value"] and low["mean_diff"] == high["mean_diff"]
    assert (low["wins"], low["losses"], low["ties"]) == (1, 6, 1)


def test_paired_p_better_is_a_posterior_probability():
    # Flat prior: the posterior of the mean difference is mean_diff + sem * T(n - 1);
    # P(mean > 0) by Monte Carlo must agree with the closed form.
    r = paired(VARIANT, BASELINE)
    d = VARIANT - BASELINE
    draws = d.mean() + sp.sem(d) * np.random.default_rng(0).standard_t(len(d) - 1, size=400_000)
    assert r["p_better"] == pytest.approx(np.mean(draws > 0), abs=3e-3)


def test_paired_drops_pairs_with_nan():
    v = np.append(VARIANT, [NAN, 0.5, float("inf")])
    b = np.append(BASELINE, [0.7, NAN, 0.6])
    assert paired(v, b) == pytest.approx(paired(VARIANT, BASELINE))


def test_paired_identical_nonzero_differences(strict):
    r = paired([0.9, 0.8, 0.7, 0.6], [0.8, 0.7, 0.6, 0.5])  # every difference 0.1 up to rounding
    # the exact sign-flip test: 2 of the 2**4 sign patterns reach the observed mean
    assert r["p_value"] == 2 / 2**4 and r["p_better"] == 1.0
    assert r["ci_low"] == r["ci_high"] == r["mean_diff"] == pytest.approx(0.1)
    assert (r["wins"], r["losses"], r["ties"]) == (4, 0, 0)
    worse = paired([0.9, 0.8, 0.7, 0.6], [0.8, 0.7, 0.6, 0.5], higher_is_better=False)
    assert worse["p_value"] == 2 / 2**4 and worse["p_better"] == 0.0
    assert (worse["wins"], worse["losses"]) == (0, 4)


@pytest.mark.parametrize("n, expected", [(3, "no clear difference"), (5, "no clear difference"), (6, "worse"),
                                         (30, "worse")])
def test_identical_differences_on_few_seeds_are_not_certainty(n, expected):
    """One test row lost on every seed (accuracy on 90 rows): no spread, so no t statistic. With 3
    seeds that is what chance gives a quarter of the time (both all-equal sign patterns), not p = 0."""
    baseline = np.linspace(0.60, 0.70, n)
    r = paired(baseline - 1 / 90, baseline)
    exact = sum(abs(np.mean(np.array(signs) * (-1 / 90))) >= 1 / 90 - 1e-12
                for signs in itertools.product([-1, 1], repeat=min(n, 12))) / 2 ** min(n, 12)
    if n <= 12:                                   # enumerate every sign pattern: the permutation p-value
        assert r["p_value"] == pytest.approx(exact)
    assert r["p_value"] == 2.0 ** (1 - n) and verdict(r, r["p_value"]) == expected


def test_paired_zero_differences(strict):
    x = [0.3, 0.7, 0.9]
    r = paired(x, x)
    assert r["p_value"] == 1.0 and r["p_better"] == 0.5
    assert (r["mean_diff"], r["std_diff"], r["ci_low"], r["ci_high"]) == (0.0, 0.0, 0.0, 0.0)
    assert (r["wins"], r["losses"], r["ties"]) == (0, 0, 3)


def test_paired_rounding_noise_is_a_tie(strict):
    # 0.1 + 0.2 and 0.3 differ by one ulp: not evidence that either is better.
    r = paired([0.1 + 0.2, 0.3, 0.1 + 0.2], [0.3, 0.3, 0.3])
    assert r["p_value"] == 1.0 and r["p_better"] == 0.5 and r["ties"] == 3


def test_paired_few_seeds(strict):
    one = paired([0.9, NAN], [0.8, 0.8])
    assert one["n"] == 1 and one["mean_diff"] == pytest.approx(0.1) and one["wins"] == 1
    assert all(math.isnan(one[key]) for key in ("std_diff", "ci_low", "ci_high", "p_value", "p_better"))
    none = paired([NAN], [0.8])
    assert none["n"] == 0 and (none["wins"], none["losses"], none["ties"]) == (0, 0, 0)
    assert all(math.isnan(none[key]) for key in ("mean_diff", "std_diff", "p_value", "p_better"))


def test_paired_rejects_unpaired_lengths():
    with pytest.raises(ValueError, match="'variant' and 'baseline'.*Got 3 and 2"):
        paired([1, 2, 3], [1, 2])


@FAST
@given(st.integers(2, 30).flatmap(lambda n: st.tuples(hnp.arrays(np.float64, n, elements=scores),
                                                      hnp.arrays(np.float64, n, elements=scores))))
def test_paired_properties(pair):
    v, b = pair
    d = v - b
    assume(np.ptp(d) > 1e-6 * max(1.0, np.abs(d).max()))  # non-degenerate: compare with SciPy
    r = paired(v, b)
    swapped = paired(b, v)
    assert r["p_value"] == pytest.approx(sp.ttest_rel(v, b).pvalue, rel=1e-7, abs=1e-12)
    assert r["ci_low"] <= r["mean_diff"] <= r["ci_high"]
    assert swapped["mean_diff"] == pytest.approx(-r["mean_diff"], abs=1e-9)
    assert swapped["p_value"] == pytest.approx(r["p_value"], rel=1e-9, abs=1e-12)
    assert swapped["p_better"] == pytest.approx(1 - r["p_better"], abs=1e-9)
    # two-sided p = 2 * the smaller tail of the posterior
    assert r["p_value"] == pytest.approx(2 * min(r["p_better"], 1 - r["p_better"]), rel=1e-7, abs=1e-12)
    assert r["wins"] + r["losses"] + r["ties"] == r["n"] == len(v)


# ---------------------------------------------------------------- holm


def test_holm_known_example():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)


def test_holm_by_hand():
    # sorted 0.04, 0.045: 2 * 0.04 = 0.08, then max(0.08, 0.045) = 0.08 (the running maximum)
    np.testing.assert_allclose(holm([0.045, 0.04]), [0.08, 0.08], rtol=1e-12)
    # capped at one
    np.testing.assert_allclose(holm([0.5, 0.6, 0.001]), [1.0, 1.0, 0.003], rtol=1e-12)
    np.testing.assert_allclose(holm([0.2]), [0.2])
    assert holm([]).shape == (0,)


def test_holm_nan_passes_through_and_does_not_count():
    adjusted = holm([0.01, NAN, 0.04])
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2]], [0.02, 0.04], rtol=1e-12)
    assert np.isnan(holm([NAN, NAN])).all()


def reference_holm(p):
    """Holm's step-down procedure written out: the smallest alpha at which each hypothesis falls."""
    m = len(p)
    ranked = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 0.0
    for step, i in enumerate(ranked):
        running = max(running, min(1.0, (m - step) * p[i]))
        out[i] = running
    return out


@FAST
@given(st.lists(probabilities, min_size=1, max_size=20))
def test_holm_properties(p):
    adjusted = holm(p)
    raw = np.array(p)
    np.testing.assert_allclose(adjusted, reference_holm(p), rtol=1e-12, atol=0)
    assert np.all(adjusted >= raw) and np.all(adjusted <= 1.0)
    assert np.all(adjusted <= np.minimum(1.0, len(p) * raw) + 1e-15)  # never worse than Bonferroni
    order = np.argsort(raw, kind="stable")
    assert np.all(np.diff(adjusted[order]) >= 0)  # monotone in the raw p-values


@FAST
@given(st.lists(probabilities, min_size=1, max_size=12), st.floats(0.001, 0.2))
def test_holm_rejects_exactly_what_the_step_down_procedure_rejects(p, alpha):
    m = len(p)
    rejected = set()
    for step, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        if (m - step) * p[i] > alpha:
            break
        rejected.add(i)
    assert {i for i, a in enumerate(holm(p)) if a <= alpha} == rejected


# ---------------------------------------------------------------- verdict


def test_verdict_each_outcome():
    up = paired(VARIANT, BASELINE)
    assert up["mean_diff"] > 0 and up["p_value"] < 0.05
    assert verdict(up, up["p_value"]) == "better"
    assert verdict(up, up["p_value"], higher_is_better=False) == "worse"
    assert verdict(up, 0.2) == "no clear difference"
    assert verdict(up, 0.05) == "no clear difference"  # strict: p < alpha
    assert verdict(up, 0.05, alpha=0.1) == "better"
    assert verdict(up, NAN) == "no clear difference"
    down = paired(BASELINE, VARIANT)
    assert verdict(down, down["p_value"]) == "worse"
    assert verdict(down, down["p_value"], higher_is_better=False) == "better"


def test_verdict_zero_or_missing_difference():
    assert verdict(paired([0.3, 0.7], [0.3, 0.7]), 0.0) == "no clear difference"
    assert verdict(paired([NAN], [0.5]), 0.0) == "no clear difference"


def test_verdict_with_holm_across_variants():
    p = [paired(VARIANT, BASELINE)["p_value"], 0.9, 0.8]
    adjusted = holm(p)
    assert adjusted[0] == pytest.approx(3 * p[0])
    expected = "better" if 3 * p[0] < 0.05 else "no clear difference"
    assert verdict(paired(VARIANT, BASELINE), adjusted[0]) == expected


# ---------------------------------------------------------------- one_se_rule / choose_decade

GRID = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
GRID_SCORES = [
    [0.80, 0.84, 0.82, 0.81],  # mean 0.8175
    [0.86, 0.90, 0.88, 0.87],  # mean 0.8775, the best; sem = std / 2
    [0.855, 0.895, 0.875, 0.865],  # mean 0.8725, within one SE of the best
    [0.83, 0.85, 0.84, 0.83],  # mean 0.8375, not
    [0.50, 0.50, 0.50, 0.50],
]


def test_one_se_rule_by_hand():
    r = one_se_rule(GRID, GRID_SCORES)
    best_se = np.std(GRID_SCORES[1], ddof=1) / 2
    assert r["best"] == 1e-3 and r["best_mean"] == pytest.approx(0.8775)
    assert r["best_se"] == pytest.approx(best_se, rel=1e-12)
    assert 0.8775 - best_se < 0.8725 < 0.8775  # so 1e-2 qualifies
    assert r["one_se"] == 1e-2
    np.testing.assert_allclose(r["means"], np.mean(GRID_SCORES, axis=1), rtol=1e-12)
    np.testing.assert_allclose(r["ses"], sp.sem(GRID_SCORES, axis=1), rtol=1e-12)


def test_one_se_rule_lower_is_better():
    losses = 1 - np.array(GRID_SCORES)
    r = one_se_rule(GRID, losses, higher_is_better=False)
    assert (r["best"], r["one_se"]) == (1e-3, 1e-2)
    assert r["best_mean"] == pytest.approx(1 - 0.8775)


def test_one_se_rule_ignores_input_order():
    order = [3, 0, 4, 2, 1]
    r = one_se_rule(np.array(GRID)[order], np.array(GRID_SCORES)[order])
    assert (r["best"], r["one_se"]) == (1e-3, 1e-2)
    np.testing.assert_allclose(r["means"], np.mean(GRID_SCORES, axis=1)[order])


def test_one_se_rule_ties_go_to_the_stronger_strength():
    r = one_se_rule([0.1, 0.01], [[0.9, 0.9], [0.9, 0.9]])
    assert (r["best"], r["one_se"]) == (0.1, 0.1)


def test_one_se_rule_missing_runs(strict):
    nan_row = one_se_rule([0.0, 0.1, 1.0], [[0.8, 0.82, 0.81], [0.9, 0.91, 0.92], [NAN, NAN, NAN]])
    assert (nan_row["best"], nan_row["one_se"]) == (0.1, 0.1)
    assert math.isnan(nan_row["means"][2])
    single = one_se_rule([0.01, 0.1], [[0.9, NAN], [0.89, NAN]])  # one seed: no SE, no tolerance
    assert (single["best"], single["one_se"]) == (0.01, 0.01) and math.isnan(single["best_se"])
    empty = one_se_rule([0.01, 0.1], [[NAN], [NAN]])
    assert all(math.isnan(empty[key]) for key in ("best", "best_mean", "best_se", "one_se"))


def reference_one_se(lam, rows):
    means = [np.mean(row) for row in rows]
    best = max(range(len(lam)), key=lambda i: (means[i], lam[i]))
    se = np.std(rows[best], ddof=1) / math.sqrt(len(rows[best]))
    return lam[best], max(l for l, m in zip(lam, means) if m >= means[best] - se)


@FAST
@given(st.integers(1, 6).flatmap(lambda k: st.tuples(
    st.lists(st.floats(1e-6, 10.0), min_size=k, max_size=k, unique=True),
    hnp.arrays(np.float64, (k, 5), elements=st.floats(0, 1)))))
def test_one_se_rule_properties(case):
    lam, rows = case
    r = one_se_rule(lam, rows)
    assert r["one_se"] >= r["best"]
    assert r["best_mean"] == pytest.approx(max(r["means"]))
    one = lam.index(r["one_se"])
    assert r["means"][one] >= r["best_mean"] - r["best_se"]
    stronger = [i for i, l in enumerate(lam) if l > r["one_se"]]
    assert all(r["means"][i] < r["best_mean"] - r["best_se"] for i in stronger)
    best, one_se = reference_one_se(lam, rows)
    assert (r["best"], r["one_se"]) == (best, one_se)
    low, high = choose_decade(lam, rows)
    assert min(lam) <= low <= r["one_se"] <= high <= max(lam)


def test_choose_decade_centres_on_the_one_se_choice():
    # The best mean is at 1e-3, but 1e-2 is within one SE: the decade is centred on 1e-2,
    # not (1e-4, 1e-2) as the best mean alone would give.
    assert choose_decade(GRID, GRID_SCORES) == pytest.approx((1e-3, 1e-1))


def test_choose_decade_clips_to_the_grid():
    assert choose_decade([1e-3, 1e-2, 1e-1], [[0.9, 0.91], [0.7, 0.71], [0.5, 0.51]]) == pytest.approx((1e-3, 1e-2))
    assert choose_decade([1e-3, 1e-2, 1e-1], [[0.5, 0.51], [0.7, 0.71], [0.9, 0.91]]) == pytest.approx((1e-2, 1e-1))
    assert choose_decade([0.5], [[0.9, 0.8]]) == (0.5, 0.5)


def test_choose_decade_needs_positive_strengths_and_a_score():
    with pytest.raises(ValueError, match="'strengths' parameter of choose_decade must hold .* > 0"):
        choose_decade([0.0, 0.1], [[0.9], [0.8]])
    with pytest.raises(ValueError, match="'per_seed_scores' parameter of choose_decade must hold at least one finite"):
        choose_decade([0.01, 0.1], [[NAN], [NAN]])


# ---------------------------------------------------------------- refine_grid


def test_refine_grid_by_hand():
    assert refine_grid(1e-3, 1e-1) == [0.001, 0.00316, 0.01, 0.0316, 0.1]
    assert refine_grid(1e-3, 1e-2, points=5) == [0.001, 0.00178, 0.00316, 0.00562, 0.01]
    assert refine_grid(0.25, 0.25) == [0.25]
    assert refine_grid(0.001, 0.1, points=1) == [0.001]
    assert refine_grid(1.0, 1.001, points=4) == [1.0]  # rounding merges the duplicates


@FAST
@given(st.floats(1e-8, 1e3), st.floats(1.0, 1e4), st.integers(1, 12))
def test_refine_grid_properties(low, ratio, points):
    high = low * ratio
    grid = refine_grid(low, high, points)
    assert 1 <= len(grid) <= points
    assert grid == sorted(set(grid))
    assert all(float(f"{g:.3g}") == g for g in grid)
    assert low * (1 - 5e-3) <= grid[0] and grid[-1] <= high * (1 + 5e-3)


# ---------------------------------------------------------------- ensemble_accuracy


def test_ensemble_accuracy_binary_by_hand():
    probs = [[0.9, 0.9, 0.6],
             [0.4, 0.9, 0.1],
             [0.9, 0.4, 0.1]]
    y = [1, 1, 0]
    # means 0.733, 0.733, 0.267 -> predictions 1, 1, 0: all right,
    # while each member gets one sample wrong.
    assert ensemble_accuracy(probs, y) == 1.0
    assert [ensemble_accuracy([member], y) for member in probs] == pytest.approx([2 / 3] * 3)


def test_ensemble_accuracy_binary_threshold():
    # a mean of exactly 0.5 is class 0, as a logit of exactly 0 is in reglab.tasks
    assert ensemble_accuracy([[0.4, 0.6], [0.6, 0.4]], [0, 0]) == 1.0


def test_ensemble_accuracy_multiclass_by_hand():
    probs = np.array([
        [[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]],
        [[0.1, 0.5, 0.4], [0.2, 0.2, 0.6], [0.5, 0.2, 0.3]],
    ])
    # means [.35 .4 .25] -> 1, [.15 .2 .65] -> 2, [.4 .3 .3] -> 0
    assert ensemble_accuracy(probs, [1, 2, 2]) == pytest.approx(2 / 3)
    assert ensemble_accuracy(probs, [1, 2, 0]) == 1.0
    assert ensemble_accuracy(probs[:1], [0, 2, 1]) == 1.0


@FAST
@given(st.integers(1, 5).flatmap(lambda m: st.integers(1, 20).flatmap(lambda n: st.tuples(
    hnp.arrays(np.float64, (m, n, 3), elements=st.floats(0.01, 1)),
    hnp.arrays(np.int64, n, elements=st.integers(0, 2))))))
def test_ensemble_accuracy_multiclass_matches_plain_numpy(case):
    raw, y = case
    probs = raw / raw.sum(-1, keepdims=True)
    expected = np.mean(probs.mean(0).argmax(-1) == y)
    assert ensemble_accuracy(probs, y) == expected


# ---------------------------------------------------------------- invalid arguments, as data

GOOD = [0.8, 0.9, 0.85]
INVALID = [
    (describe, dict(values=[[1, 2], [3, 4]]), ValueError, "'values' parameter of describe must be 1-D"),
    (describe, dict(values=["a", "b"]), TypeError, "'values' parameter of describe must be an array of real"),
    (describe, dict(values=0.5), ValueError, "'values' parameter of describe must be 1-D"),
    (paired, dict(variant=GOOD, baseline=GOOD, higher_is_better="yes"), TypeError, "'higher_is_better'"),
    (paired, dict(variant=[GOOD], baseline=GOOD), ValueError, "'variant' parameter of paired must be 1-D"),
    (holm, dict(p_values=[0.2, 1.5]), ValueError, "'p_values' parameter of holm .* \\[0, 1\\].*1.5"),
    (holm, dict(p_values=[-0.1]), ValueError, "'p_values' parameter of holm"),
    (verdict, dict(paired_result=0.3, adjusted_p=0.01), TypeError, "'paired_result' parameter of verdict"),
    (verdict, dict(paired_result={"mean_diff": 0.1}, adjusted_p=1.2), ValueError, "'adjusted_p'"),
    (verdict, dict(paired_result={"mean_diff": 0.1}, adjusted_p="0.01"), TypeError, "'adjusted_p'"),
    (verdict, dict(paired_result={"mean_diff": 0.1}, adjusted_p=0.01, alpha=0), ValueError, "'alpha'.*\\(0, 1\\)"),
    (verdict, dict(paired_result={"mean_diff": 0.1}, adjusted_p=0.01, alpha=1.5), ValueError, "'alpha'"),
    (one_se_rule, dict(strengths=[0.1, 0.1], per_seed_scores=[GOOD, GOOD]), ValueError, "must not repeat"),
    (one_se_rule, dict(strengths=[-0.1], per_seed_scores=[GOOD]), ValueError, "'strengths'.*>= 0"),
    (one_se_rule, dict(strengths=[NAN], per_seed_scores=[GOOD]), ValueError, "'strengths'"),
    (one_se_rule, dict(strengths=[], per_seed_scores=[]), ValueError, "'strengths'.*at least one"),
    (one_se_rule, dict(strengths=[0.1, 1.0], per_seed_scores=[GOOD]), ValueError,
     "'per_seed_scores'.*k = 2.*Got shape \\(1, 3\\)"),
    (one_se_rule, dict(strengths=[0.1], per_seed_scores=GOOD), ValueError, "'per_seed_scores'.*\\(k, n_seeds\\)"),
    (choose_decade, dict(strengths=[0.1, 1.0], per_seed_scores=[GOOD]), ValueError, "'per_seed_scores'"),
    (refine_grid, dict(low=0.0, high=1.0), ValueError, "'low' parameter of refine_grid must be a finite float > 0"),
    (refine_grid, dict(low=0.1, high=float("inf")), ValueError, "'high'"),
    (refine_grid, dict(low=0.1, high=0.01), ValueError, "'high' parameter of refine_grid must be >= low"),
    (refine_grid, dict(low="0.1", high=1.0), TypeError, "'low'"),
    (refine_grid, dict(low=0.1, high=1.0, points=0), ValueError, "'points'.*\\[1, inf\\).*Got 0"),
    (refine_grid, dict(low=0.1, high=1.0, points=2.5), TypeError, "'points'"),
    (ensemble_accuracy, dict(probabilities=[0.2, 0.8], y=[0, 1]), ValueError, "probabilities\\[None\\]"),
    (ensemble_accuracy, dict(probabilities=[[0.2, 0.8]], y=[0, 1, 1]), ValueError, "'y'.*2 samples.*Got 3"),
    (ensemble_accuracy, dict(probabilities=[[0.2, 1.8]], y=[0, 1]), ValueError, "'probabilities'.*\\[0, 1\\]"),
    (ensemble_accuracy, dict(probabilities=[[0.2, NAN]], y=[0, 1]), ValueError, "'probabilities'"),
    (ensemble_accuracy, dict(probabilities=[[0.2, 0.8]], y=[0, 2]), ValueError, "'y'.*\\[0, 1\\]"),
    (ensemble_accuracy, dict(probabilities=[[0.2, 0.8]], y=[0, 0.5]), ValueError, "'y'.*integer labels"),
    (ensemble_accuracy, dict(probabilities=[[[0.5, 0.5]]], y=[-1]), ValueError, "'y'"),
]


@pytest.mark.parametrize("function, kwargs, error, message", INVALID,
                         ids=[f"{case[0].__name__}-{i}" for i, case in enumerate(INVALID)])
def test_invalid_arguments_name_the_parameter(function, kwargs, error, message):
    with pytest.raises(error, match=message):
        function(**kwargs)
