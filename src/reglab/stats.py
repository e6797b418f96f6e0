"""Statistics for comparing configurations over a paired list of seeds (DESIGN.md §5).

Every configuration of a study runs on the same seeds, so a variant is compared with the
baseline seed by seed: the paired differences carry the evidence and the seed-to-seed noise
that both share cancels. Intervals are 95% Student t intervals; several variants compared with
one baseline are corrected with Holm's step-down method; a penalty strength is reported as the
best one and the largest one within one standard error of it (glmnet's 1-SE rule).

A study over several train/test splits (``splits = K``) pairs its runs by (split, seed); their
training sets overlap, so the runs are not independent and the plain t interval is too narrow.
:func:`paired` and :func:`describe` then take ``test_train_ratio = n_test / n_train`` and use
Nadeau and Bengio's corrected resampled t statistic instead (see :func:`paired`).

Pure NumPy/SciPy; every function takes plain arrays (lists work) of per-seed values. NaN and
±inf mark a missing or diverged run: they are dropped, and ``n`` says how many values remain.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import stats as _sp

_LEVEL = 0.95  # two-sided coverage of every interval
_EPS = np.finfo(np.float64).eps


# ---------------------------------------------------------------- summaries


def describe(values, *, test_train_ratio: float | None = None) -> dict:
    """Mean, spread and 95% confidence interval of one metric over seeds.

    With the ``n`` finite values ``x_i`` (NaN and inf are dropped)::

        mean = sum(x_i) / n
        std  = sqrt(sum((x_i - mean) ** 2) / (n - 1))      # ddof = 1
        sem  = std / sqrt(n)
        ci   = mean -/+ t.ppf(0.975, n - 1) * sem           # ci_low, ci_high

    With ``test_train_ratio`` (``n_test / n_train``: the values are test scores of runs on
    resampled train/test splits whose training sets overlap) the standard error is Nadeau and
    Bengio's corrected one, ``sem = std * sqrt(1 / n + n_test / n_train)`` (see :func:`paired`).

    ``n == 1`` leaves std, sem and the interval NaN; ``n == 0`` leaves everything but ``n`` NaN.

    >>> r = describe([0.80, 0.85, 0.90, float("nan")])
    >>> r["n"], round(r["mean"], 3), round(r["std"], 3)
    (3, 0.85, 0.05)
    >>> round(r["ci_low"], 3), round(r["ci_high"], 3)
    (0.726, 0.974)
    """
    x = _vector(values, "values", "describe")
    ratio = _check_ratio(test_train_ratio, "describe")
    x = x[np.isfinite(x)]
    n = x.size
    nan = math.nan
    if n == 0:
        return {"n": 0, "mean": nan, "std": nan, "sem": nan, "ci_low": nan, "ci_high": nan}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "std": nan, "sem": nan, "ci_low": nan, "ci_high": nan}
    std = float(x.std(ddof=1))
    sem = _sem(std, n, ratio)
    half = _t_half_width(sem, n)
    return {"n": n, "mean": mean, "std": std, "sem": sem, "ci_low": mean - half, "ci_high": mean + half}


def paired(variant, baseline, higher_is_better: bool = True, *, test_train_ratio: float | None = None) -> dict:
    """Compare a variant with the baseline on the same seeds (paired t).

    ``variant[i]`` and ``baseline[i]`` come from seed ``i``; a pair with a NaN or inf on
    either side is dropped. With the ``n`` differences ``d_i = variant_i - baseline_i``::

        mean_diff = mean(d),  std_diff = std(d, ddof=1),  sem = std_diff / sqrt(n)
        ci        = mean_diff -/+ t.ppf(0.975, n - 1) * sem
        p_value   = 2 * t.sf(|mean_diff / sem|, n - 1)   # two-sided, = scipy.stats.ttest_rel
        p_better  = t.cdf(mean_diff / sem, n - 1)        # 1 - that when lower is better
        mde       = (t.ppf(0.975, n - 1) + t.ppf(0.8, n - 1)) * sem
                    # the smallest true difference these seeds detect with power 0.8 at
                    # alpha 0.05 (two-sided, before Holm): "do I have enough seeds?"

    ``p_better`` is the posterior probability that the true mean difference favours the variant,
    under a flat prior on the mean and log-standard-deviation (the posterior of the mean is then
    a t distribution centred on ``mean_diff`` with scale ``sem``).

    When all differences are identical (up to floating-point rounding: a spread of at most
    16 machine epsilons times the largest value compared) there is no noise to weigh them against
    and the t statistic is undefined (a discrete metric on few seeds gets there: one test row lost
    on each seed). ``p_value`` is then 1 if they are zero, and otherwise the exact sign-flip
    (permutation) test's: under the null each difference's sign is a fair coin, and only the
    all-positive and all-negative patterns reach the observed mean, so ``p_value = 2 / 2**n``
    (0.25 for 3 seeds, 2e-9 for 30) -- never the 0 that would claim certainty from a few seeds.
    With ``test_train_ratio`` (below) the pairs are correlated and ``n`` there is the number of
    independent pairs the correction implies, ``1 / (1/n + test_train_ratio)``. ``p_better`` is
    1.0, 0.0 or 0.5 and the interval is ``[mean_diff, mean_diff]``. ``wins``, ``losses`` and
    ``ties`` count the seeds on which the variant did better, worse, or the same (within that
    rounding).
    ``n < 2`` leaves everything but ``n``, the counts and (for ``n == 1``) ``mean_diff`` NaN.

    **Overlapping training sets** (``test_train_ratio`` given): when the ``n = J`` pairs come from
    ``K`` resampled train/test splits of one data set (times ``S`` seeds each, ``J = K * S``), the
    training sets overlap, the differences are correlated and ``std_diff / sqrt(J)`` underestimates
    the standard error: the plain paired t-test then rejects a true null far more often than 5%.
    Nadeau and Bengio's corrected resampled t-test replaces the variance of the mean by::

        sem = std_diff * sqrt(1 / J + n_test / n_train)     # test_train_ratio = n_test / n_train
        t   = mean_diff / sem,   J - 1 degrees of freedom

    and the interval, ``p_value``, ``p_better`` and ``mde`` above use this ``sem`` (C. Nadeau and
    Y. Bengio, "Inference for the Generalization Error", Machine Learning 52:239-281, 2003; the same
    correction for repeated K-fold cross-validation with ``n_test / n_train = 1 / (K - 1)``:
    R. Bouckaert and E. Frank, "Evaluating the Replicability of Significance Tests for Comparing
    Learning Algorithms", PAKDD 2004). The result then also holds ``test_train_ratio``.
    ``test_train_ratio = None`` (the default) is the plain paired t-test above.

    >>> r = paired([0.90, 0.88, 0.93, 0.91, 0.92], [0.85, 0.86, 0.88, 0.90, 0.87])
    >>> r["n"], round(r["mean_diff"], 3), r["wins"], r["losses"], r["ties"]
    (5, 0.036, 5, 0, 0)
    >>> round(r["ci_low"], 4), round(r["ci_high"], 4), round(r["p_value"], 4), round(r["p_better"], 4)
    (0.0118, 0.0602, 0.0145, 0.9928)
    >>> c = paired([0.90, 0.88, 0.93, 0.91, 0.92], [0.85, 0.86, 0.88, 0.90, 0.87], test_train_ratio=0.25)
    >>> round(c["ci_low"], 4), round(c["ci_high"], 4), round(c["p_value"], 4), c["test_train_ratio"]
    (-0.0003, 0.0723, 0.0512, 0.25)
    """
    owner = "paired"
    v = _vector(variant, "variant", owner)
    b = _vector(baseline, "baseline", owner)
    if v.shape != b.shape:
        raise ValueError(f"The 'variant' and 'baseline' parameters of {owner} must hold one value per seed, "
                         f"for the same seeds. Got {v.size} and {b.size} values instead.")
    _check_bool(higher_is_better, "higher_is_better", owner)
    ratio = _check_ratio(test_train_ratio, owner)
    keep = np.isfinite(v) & np.isfinite(b)
    v, b = v[keep], b[keep]
    d = v - b
    n = d.size
    sign = 1.0 if higher_is_better else -1.0
    tol = 16 * _EPS * float(max(np.abs(v).max(initial=0.0), np.abs(b).max(initial=0.0)))
    nan = math.nan
    result = {"n": n, "mean_diff": nan, "std_diff": nan, "ci_low": nan, "ci_high": nan,
              "p_value": nan, "p_better": nan, "mde": nan,
              "wins": int(np.sum(sign * d > tol)), "losses": int(np.sum(sign * d < -tol)),
              "ties": int(np.sum(np.abs(d) <= tol))}
    if ratio is not None:
        result["test_train_ratio"] = ratio
    if n == 0:
        return result
    mean = float(d.mean())
    result["mean_diff"] = mean
    if n == 1:
        return result
    std = float(d.std(ddof=1))
    result["std_diff"] = std
    if np.ptp(d) <= tol:  # identical differences: no noise to weigh them against
        favour = 0.0 if abs(mean) <= tol else sign * mean
        # fewer where the training sets overlap: the n for which std / sqrt(n) is _sem's corrected error
        independent = n if ratio is None else 1.0 / (1.0 / n + ratio)
        result.update(ci_low=mean, ci_high=mean, p_value=1.0 if favour == 0.0 else 2.0 ** (1 - independent),
                      p_better=0.5 if favour == 0.0 else float(favour > 0), mde=0.0)
        return result
    sem = _sem(std, n, ratio)
    half = _t_half_width(sem, n)
    t_stat = mean / sem
    result.update(ci_low=mean - half, ci_high=mean + half,
                  p_value=float(min(1.0, 2 * _sp.t.sf(abs(t_stat), n - 1))),
                  p_better=float(_sp.t.cdf(sign * t_stat, n - 1)),
                  mde=float((_sp.t.ppf(0.975, n - 1) + _sp.t.ppf(0.8, n - 1)) * sem))
    return result


def holm(p_values) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the order given.

    With the ``m`` non-NaN p-values sorted ascending, ``p_(1) <= ... <= p_(m)``::

        adjusted_(i) = max over j <= i of min(1, (m - j + 1) * p_(j))

    Rejecting where ``adjusted < alpha`` controls the family-wise error rate at ``alpha``
    (Holm 1979). The running maximum keeps the adjusted values in the order of the raw ones.
    NaN (a comparison that could not be made) passes through and does not count in ``m``.

    >>> holm([0.01, 0.04, 0.03, 0.005]).round(4)
    array([0.03, 0.06, 0.06, 0.02])
    """
    p = _vector(p_values, "p_values", "holm")
    finite = ~np.isnan(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        bad = p[finite][(p[finite] < 0) | (p[finite] > 1)][0]
        raise ValueError(f"The 'p_values' parameter of holm must hold probabilities in [0, 1] or NaN. "
                         f"Got {bad!r} instead.")
    adjusted = np.full(p.shape, np.nan)
    index = np.flatnonzero(finite)
    order = index[np.argsort(p[index], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def verdict(paired_result: dict, adjusted_p: float, alpha: float = 0.05,
            higher_is_better: bool = True) -> str:
    """Say "better", "worse" or "no clear difference" for one variant against the baseline.

    ``better`` when ``adjusted_p < alpha`` and ``mean_diff`` favours the variant (above zero when
    higher is better, below when lower is), ``worse`` when it is significant the other way, and
    ``no clear difference`` otherwise, including a NaN p-value. Pass the Holm-adjusted p-value
    when several variants share one baseline.

    >>> r = paired([0.90, 0.88, 0.93, 0.91, 0.92], [0.85, 0.86, 0.88, 0.90, 0.87])
    >>> verdict(r, r["p_value"]), verdict(r, 0.2)
    ('better', 'no clear difference')
    >>> verdict(r, r["p_value"], higher_is_better=False)
    'worse'
    """
    owner = "verdict"
    if not isinstance(paired_result, dict) or "mean_diff" not in paired_result:
        raise TypeError(f"The 'paired_result' parameter of {owner} must be the dict returned by paired(). "
                        f"Got {type(paired_result).__name__} instead.")
    if isinstance(adjusted_p, (bool, np.bool_)) or not isinstance(adjusted_p, numbers.Real):
        raise TypeError(f"The 'adjusted_p' parameter of {owner} must be a float in the range [0, 1] or NaN. "
                        f"Got {adjusted_p!r} of type {type(adjusted_p).__name__} instead.")
    if not math.isnan(adjusted_p) and not 0 <= adjusted_p <= 1:
        raise ValueError(f"The 'adjusted_p' parameter of {owner} must be a float in the range [0, 1] or NaN. "
                         f"Got {adjusted_p!r} instead.")
    _check_open_fraction(alpha, "alpha", owner)
    _check_bool(higher_is_better, "higher_is_better", owner)
    mean = paired_result["mean_diff"]
    if math.isnan(adjusted_p) or not adjusted_p < alpha or math.isnan(mean) or mean == 0:
        return "no clear difference"
    return "better" if (mean > 0) == higher_is_better else "worse"


# ---------------------------------------------------------------- penalty strength


def one_se_rule(strengths, per_seed_scores, higher_is_better: bool = True) -> dict:
    """The best strength and the strongest one within one standard error of it (glmnet's rule).

    ``strengths`` has shape ``(k,)`` and ``per_seed_scores`` shape ``(k, n_seeds)``, row ``i``
    holding the scores of ``strengths[i]`` (NaN for a missing run). Per row, ``means[i]`` and
    ``ses[i] = std / sqrt(n)`` come from :func:`describe`. Then::

        best   = the strength with the best mean          (ties: the larger strength)
        one_se = max{strengths[i] : means[i] >= best_mean - best_se}   # higher is better
                 max{strengths[i] : means[i] <= best_mean + best_se}   # lower is better

    i.e. the strongest regularization whose mean cannot be told from the best one's. A best
    mean from a single seed has no SE (NaN) and the rule then falls back to ``best``. Rows with
    no finite score are skipped; if none has one, ``best``, ``best_mean``, ``best_se`` and
    ``one_se`` are NaN.

    >>> r = one_se_rule([1e-4, 1e-3, 1e-2, 1e-1],
    ...                 [[0.80, 0.84, 0.82], [0.85, 0.89, 0.87], [0.84, 0.88, 0.86], [0.70, 0.72, 0.71]])
    >>> r["best"], r["one_se"], round(r["best_mean"], 3), round(r["best_se"], 4)
    (0.001, 0.01, 0.87, 0.0115)
    """
    owner = "one_se_rule"
    lam = _strengths(strengths, owner, positive=False)
    means, ses = _row_summaries(per_seed_scores, lam.size, owner)
    _check_bool(higher_is_better, "higher_is_better", owner)
    result = {"best": math.nan, "best_mean": math.nan, "best_se": math.nan, "one_se": math.nan,
              "means": means, "ses": ses}
    ok = np.isfinite(means)
    if not ok.any():
        return result
    signed = np.where(ok, means if higher_is_better else -means, -np.inf)
    top = signed.max()
    best = int(np.flatnonzero(signed == top)[np.argmax(lam[signed == top])])
    se = float(ses[best]) if np.isfinite(ses[best]) else 0.0
    within = ok & (signed >= top - se)
    result.update(best=float(lam[best]), best_mean=float(means[best]), best_se=float(ses[best]),
                  one_se=float(lam[within].max()))
    return result


def choose_decade(strengths, per_seed_scores, higher_is_better: bool = True) -> tuple[float, float]:
    """The range to refine after a coarse log-scale grid: one decade either side of the 1-SE choice.

    With ``centre = one_se_rule(...)["one_se"]``::

        (low, high) = (max(centre / 10, min(strengths)), min(centre * 10, max(strengths)))

    The centre is deliberately not the strength with the best mean: over a few noisy seeds the
    best mean is often a lucky neighbour of an equally good, stronger penalty. Centring on the
    largest strength whose mean is within one standard error of the best keeps the refined grid
    where the evidence is, and on the side of more regularization when it cannot tell.
    Strengths must be > 0 (log scale); ``ValueError`` if no strength has a finite score.

    >>> choose_decade([1e-4, 1e-3, 1e-2, 1e-1],
    ...               [[0.80, 0.84, 0.82], [0.85, 0.89, 0.87], [0.84, 0.88, 0.86], [0.70, 0.72, 0.71]])
    (0.001, 0.1)
    """
    owner = "choose_decade"
    lam = _strengths(strengths, owner, positive=True)
    centre = one_se_rule(lam, per_seed_scores, higher_is_better)["one_se"]
    if math.isnan(centre):
        raise ValueError(f"The 'per_seed_scores' parameter of {owner} must hold at least one finite score "
                         f"to choose a decade. Got only NaN or inf instead.")
    return float(max(centre / 10, lam.min())), float(min(centre * 10, lam.max()))


def refine_grid(low: float, high: float, points: int = 5) -> list[float]:
    """Log-spaced strengths from ``low`` to ``high``, rounded to 3 significant digits.

    ``np.geomspace(low, high, points)``, each value rounded to 3 significant digits (so the ends
    may move by up to 0.5%), duplicates removed, ascending.

    >>> refine_grid(0.001, 0.1)
    [0.001, 0.00316, 0.01, 0.0316, 0.1]
    """
    owner = "refine_grid"
    low = _check_positive(low, "low", owner)
    high = _check_positive(high, "high", owner)
    if high < low:
        raise ValueError(f"The 'high' parameter of {owner} must be >= low ({low!r}). Got {high!r} instead.")
    if isinstance(points, (bool, np.bool_)) or not isinstance(points, numbers.Integral):
        raise TypeError(f"The 'points' parameter of {owner} must be an int in the range [1, inf). "
                        f"Got {points!r} of type {type(points).__name__} instead.")
    if points < 1:
        raise ValueError(f"The 'points' parameter of {owner} must be an int in the range [1, inf). "
                         f"Got {points!r} instead.")
    return sorted({float(f"{x:.3g}") for x in np.geomspace(low, high, int(points))})


# ---------------------------------------------------------------- ensembles


def ensemble_accuracy(probabilities, y) -> float:
    """Accuracy of the ensemble that averages its members' predicted probabilities.

    ``probabilities`` has shape ``(members, n)`` for a binary task (each value P(class 1)) or
    ``(members, n, k)`` for ``k`` classes; ``y`` holds the ``n`` labels (0/1, or 0..k-1)::

        p = mean over members of probabilities
        prediction = p > 0.5  (binary)  or  argmax_k p  (multiclass)
        accuracy   = mean(prediction == y)

    The binary threshold matches :mod:`reglab.tasks` (a logit > 0 is class 1).

    >>> ensemble_accuracy([[0.9, 0.4, 0.6], [0.7, 0.8, 0.3]], [1, 1, 0])
    1.0
    """
    owner = "ensemble_accuracy"
    p = _array(probabilities, "probabilities", owner)
    labels = _vector(y, "y", owner)
    if p.ndim not in (2, 3) or p.shape[0] == 0:
        raise ValueError(f"The 'probabilities' parameter of {owner} must have shape (members, n) for a binary "
                         f"task or (members, n, k) for k classes, with at least one member. "
                         f"Got shape {p.shape} instead; use probabilities[None] for a single model.")
    if p.shape[1] != labels.size or labels.size == 0:
        raise ValueError(f"The 'y' parameter of {owner} must hold one label for each of the "
                         f"{p.shape[1]} samples in probabilities (at least one). Got {labels.size} labels instead.")
    bad = ~np.isfinite(p) | (p < 0) | (p > 1)
    if bad.any():
        raise ValueError(f"The 'probabilities' parameter of {owner} must hold finite probabilities in [0, 1]. "
                         f"Got {p[bad][0]!r} instead.")
    classes = 2 if p.ndim == 2 else p.shape[2]
    if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)) \
            or np.any((labels < 0) | (labels >= classes)):
        raise ValueError(f"The 'y' parameter of {owner} must hold integer labels in [0, {classes - 1}] to match "
                         f"probabilities of shape {p.shape}. Got {np.unique(labels)[:10].tolist()} instead.")
    mean = p.mean(axis=0)
    predicted = (mean > 0.5) if p.ndim == 2 else mean.argmax(axis=-1)
    return float(np.mean(predicted == labels))


# ---------------------------------------------------------------- helpers


def _sem(std: float, n: int, ratio: float | None) -> float:
    """The standard error of a mean of ``n`` values: ``std / sqrt(n)``, or Nadeau and Bengio's
    corrected ``std * sqrt(1 / n + ratio)`` for runs on overlapping training sets."""
    if ratio is None:
        return std / math.sqrt(n)
    return std * math.sqrt(1.0 / n + ratio)


def _check_ratio(value, owner: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"The 'test_train_ratio' parameter of {owner} must be a finite float >= 0 "
                        f"(n_test / n_train) or None. Got {value!r} of type {type(value).__name__} instead.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"The 'test_train_ratio' parameter of {owner} must be a finite float >= 0 "
                         f"(n_test / n_train) or None. Got {value!r} instead.")
    return float(value)


def _t_half_width(sem: float, n: int) -> float:
    return float(_sp.t.ppf(0.5 + _LEVEL / 2, n - 1)) * sem


def _array(values, name: str, owner: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"The {name!r} parameter of {owner} must be an array of real numbers. "
                        f"Got dtype {array.dtype} instead.")
    return array.astype(np.float64)


def _vector(values, name: str, owner: str) -> np.ndarray:
    array = _array(values, name, owner)
    if array.ndim != 1:
        raise ValueError(f"The {name!r} parameter of {owner} must be 1-D, one value per seed. "
                         f"Got shape {array.shape} instead.")
    return array


def _strengths(strengths, owner: str, *, positive: bool) -> np.ndarray:
    lam = _vector(strengths, "strengths", owner)
    if lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam <= 0 if positive else lam < 0):
        kind = "> 0" if positive else ">= 0"
        raise ValueError(f"The 'strengths' parameter of {owner} must hold at least one finite value {kind}. "
                         f"Got {lam.tolist()} instead.")
    if np.unique(lam).size != lam.size:
        raise ValueError(f"The 'strengths' parameter of {owner} must not repeat a value; merge the seeds of "
                         f"a repeated strength into one row. Got {lam.tolist()} instead.")
    return lam


def _row_summaries(per_seed_scores, k: int, owner: str) -> tuple[np.ndarray, np.ndarray]:
    scores = _array(per_seed_scores, "per_seed_scores", owner)
    if scores.ndim != 2 or scores.shape[0] != k:
        raise ValueError(f"The 'per_seed_scores' parameter of {owner} must have shape (k, n_seeds) with "
                         f"k = {k}, one row per strength. Got shape {scores.shape} instead.")
    rows = [describe(row) for row in scores]
    return np.array([r["mean"] for r in rows]), np.array([r["sem"] for r in rows])


def _check_bool(value, name: str, owner: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"The {name!r} parameter of {owner} must be a bool. "
                        f"Got {value!r} of type {type(value).__name__} instead.")


def _check_open_fraction(value, name: str, owner: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"The {name!r} parameter of {owner} must be a float in the range (0, 1). "
                        f"Got {value!r} of type {type(value).__name__} instead.")
    if not 0 < value < 1:
        raise ValueError(f"The {name!r} parameter of {owner} must be a float in the range (0, 1). "
                         f"Got {value!r} instead.")
    return float(value)


def _check_positive(value, name: str, owner: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"The {name!r} parameter of {owner} must be a finite float > 0. "
                        f"Got {value!r} of type {type(value).__name__} instead.")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"The {name!r} parameter of {owner} must be a finite float > 0. Got {value!r} instead.")
    return float(value)
