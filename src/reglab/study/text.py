"""How a study's summary reads: the numbers, verdicts and sentences that the terminal tables here
and the HTML report (:mod:`reglab.report.html`) both show, formatted in one place."""

from __future__ import annotations

import math


def fmt(x, digits: int = 3, signed: bool = False) -> str:
    """A number for people: '—' for NaN/inf/None.

    >>> fmt(0.12345), fmt(0.05, signed=True), fmt(float("nan"))
    ('0.123', '+0.050', '—')
    """
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def pm(d: dict) -> str:
    """'mean ± std' of a :func:`reglab.stats.describe` dict ('—' without a score)."""
    if not d or not d.get("n") or not math.isfinite(d["mean"]):
        return "—"
    return f"{d['mean']:.3f} ± {d['std']:.3f}" if math.isfinite(d["std"]) else f"{d['mean']:.3f}"


def ci(lo, hi, signed: bool = False) -> str:
    """'[lo, hi]' ('—' without an interval)."""
    if lo is None or not math.isfinite(lo):
        return "—"
    return f"[{fmt(lo, signed=signed)}, {fmt(hi, signed=signed)}]"


def seeds_text(seeds) -> str:
    """'0–29' for a run of consecutive seeds, else the list.

    >>> seeds_text(range(30)), seeds_text([3, 5, 7])
    ('0–29', '3, 5, 7')
    """
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def _num(x, spec: str) -> str:
    return "—" if x is None or math.isnan(x) else format(x, spec)


def rise(x: float) -> str:
    """A relative change: '+6%', or a factor once it is beyond 100×.

    >>> rise(0.06), rise(6.9e28)
    ('+6%', '×6.9e+28')
    """
    return f"{x:+.0%}" if abs(x) < 100 else f"×{x + 1:.3g}"


def divergence(row: dict) -> str:
    """'diverged (3/30 seeds)' for a variant with diverged members, else ''."""
    k = row.get("diverged", 0)
    return f"diverged ({k}/{row.get('runs') or k} seeds)" if k else ""


def verdict_text(row: dict) -> str:
    """A row's verdict as shown: the comparison's verdict, with how many seeds diverged.

    >>> verdict_text({"verdict": "diverged", "diverged": 3, "runs": 3})
    'diverged (3/3 seeds)'
    >>> verdict_text({"verdict": "better", "diverged": 1, "runs": 3})
    'better; diverged (1/3 seeds)'
    >>> verdict_text({"diverged": 0, "runs": 3})
    ''
    """
    verdict, diverged = row.get("verdict", ""), divergence(row)
    if verdict == "diverged":
        return diverged or verdict
    return "; ".join(v for v in (verdict, diverged) if v)


def runs(summary: dict) -> str:
    """What the statistics count: '30 seeds', or '3 splits × 10 seeds' over several train/test splits.

    >>> runs({"seeds": 30}), runs({"seeds": 10, "splits": 3})
    ('30 seeds', '3 splits × 10 seeds')
    """
    splits = summary.get("splits", 1)
    return f"{splits} splits × {summary['seeds']} seeds" if splits > 1 else f"{summary['seeds']} seeds"


def paired_note(summary: dict) -> str | None:
    """With several train/test splits, one line on how the runs are paired and tested; else None.

    >>> paired_note({"seeds": 10, "splits": 3, "cv": "kfold", "test_train_ratio": 0.5,
    ...            "significance_test": "corrected resampled t-test (Nadeau & Bengio 2003)"})[:62]
    'runs paired by (split, seed) over 3 splits × 10 seeds (cv = "k'
    """
    if summary.get("splits", 1) <= 1:
        return None
    return (f"runs paired by (split, seed) over {runs(summary)} (cv = \"{summary.get('cv', 'shuffle')}\"); the "
            f"training sets overlap, so the test CIs, p-values, P(better) and detectable differences come from the "
            f"{summary.get('significance_test', 'corrected resampled t-test')}, n_test/n_train = "
            f"{summary.get('test_train_ratio', float('nan')):.3g}")


def _row(summary: dict, name):
    return next((r for r in summary["rows"] if r["variant"] == name), None) if name else None


def detectable(row: dict) -> str:
    """For an unclear comparison, the smallest difference these seeds could detect (power 0.8).

    >>> detectable({"verdict": "no clear difference", "paired": {"mde": 0.0213}})
    ' (detectable: ±0.021)'
    """
    mde = (row.get("paired") or {}).get("mde", math.nan)
    if row.get("verdict") != "no clear difference" or mde is None or not math.isfinite(mde) or mde <= 0:
        return ""
    return f" (detectable: ±{mde:.3f})"


def table(summary: dict, published: dict | None = None) -> str:
    """The statistics table: mean ± std and CI of train/test metric, paired difference, verdict."""
    metric = summary["metric"]
    head = (f"{'variant':<18} {'n':>3} {'train ' + metric:>16} {'test ' + metric:>16} {'95% CI (test)':>16} "
            f"{'Δ vs ' + summary['baseline']:>22} {'P(better)':>9} {'p (Holm)':>8}  verdict")
    if published:
        head += "  | seeds' single run"
    lines = [head, "-" * len(head)]
    for row in summary["rows"]:
        paired = row.get("paired")
        if paired:
            delta = f"{paired['mean_diff']:+.3f} [{paired['ci_low']:+.3f}, {paired['ci_high']:+.3f}]" \
                if not math.isnan(paired["ci_low"]) else fmt(paired["mean_diff"], signed=True)
            pb, ph = _num(paired["p_better"], ".2f"), _num(row["p_holm"], ".3g")
        else:
            delta, pb, ph = "(baseline)", "", ""
        line = (f"{row['variant'][:18]:<18} {row['n']:>3} {pm(row['train']):>16} {pm(row['test']):>16} "
                f"{ci(row['test'].get('ci_low'), row['test'].get('ci_high')):>16} {delta:>22} {pb:>9} {ph:>8}  {verdict_text(row)}{detectable(row)}")
        if published and row["variant"] in published:
            tr, te = published[row["variant"]]
            line += f"  | train {tr:.3f} / test {te:.3f}"
        lines.append(line)
    return "\n".join(lines)


def diagnosis(summary: dict) -> str:
    lines = [f"warning: {w}" for w in summary.get("warnings", ())]
    for row in summary["rows"]:
        d = row.get("diagnosis") or {}
        if not d:
            continue
        if d["verdict"] == "diverged":
            lines.append(f"{row['variant']}: {divergence(row) or 'diverged'}: the loss became NaN or infinite; "
                         f"no score")
            continue
        parts = [f"{row['variant']}: {d['verdict']}"]
        if divergence(row):
            parts.append(f", {divergence(row)}, scored on the other {row['n']}")
        parts.append(f" (train–test gap {fmt(d.get('gap'), signed=True)}")
        if "best_val_epoch" in d:
            parts.append(f", best validation loss at epoch {d['best_val_epoch']}, then {rise(d['val_loss_rise_after_best'])}")
        parts.append(")")
        if d.get("reason"):
            parts.append(f": {d['reason']}")
        if "ensemble_accuracy" in d:
            parts.append(f"; ensemble of the seeds' members {d['ensemble_accuracy']:.3f} vs mean member "
                         f"{d['mean_member_accuracy']:.3f}")
        norms = d.get("weight_norms") or {}
        if norms:
            parts.append("; kernel L2 norms " + ", ".join(f"{k}: {v['l2']:.2f}" for k, v in norms.items()))
        sparsity = d.get("sparsity") or {}
        if sparsity:
            parts.append("; zero activations " + ", ".join(f"{k}: {v['zero_fraction']:.0%}" for k, v in sparsity.items()))
        lines.append("".join(parts))
    grid = summary.get("grid")
    if grid and not math.isnan(grid.get("best", math.nan)):
        lines.append(f"best strength {grid['best']:g} (mean {grid.get('chosen_on', 'test')} {summary['metric']} "
                     f"{grid['best_mean']:.3f} ± SE {grid['best_se']:.3f}); largest within one SE: {grid['one_se']:g}")
    if summary.get("optimistic"):
        lines.append(f"note: {summary['optimistic']}")
    if paired_note(summary):
        lines.append(f"note: {paired_note(summary)}")
    if summary.get("winner"):
        lines.append(f"winner: {summary['winner']} (better than {summary['baseline']} after the Holm correction)")
    elif summary.get("no_winner"):
        line = f"no winner: {summary['no_winner']}"
        best = _row(summary, summary.get("best"))
        if best is not None and best["variant"] != summary["baseline"] and best.get("paired"):
            p = best["paired"]
            line += (f"; the best is {best['variant']} ({summary['metric']} {pm(best['test'])}, "
                     f"Δ {fmt(p['mean_diff'], signed=True)} {ci(p['ci_low'], p['ci_high'])})")
        elif best is not None and best["variant"] == summary["baseline"]:
            line += "; the best mean is the baseline's"
        lines.append(line)
    return "\n".join(lines)


def console(summary: dict, published: dict | None = None) -> str:
    """What ``reglab run`` prints after a study: the heading, the question, the statistics table, the
    diagnosis and the winning configuration as PyTorch code."""
    s = summary
    lines = [f"== {s['study']} ({s['protocol']}, {runs(s)}, metric: {s['metric']}) =="]
    if s.get("question"):
        lines.append(s["question"])
    lines += [table(s, published), diagnosis(s)]
    if s.get("snippet"):
        lines.append("\nwinning configuration, as PyTorch code:\n" + s["snippet"])
    return "\n".join(lines)
