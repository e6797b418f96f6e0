"""Plain-text tables of a study's summary for the terminal."""

from __future__ import annotations

import math


def _pm(d: dict) -> str:
    if not d or d.get("n", 0) == 0 or math.isnan(d["mean"]):
        return "—"
    std = d["std"]
    return f"{d['mean']:.3f} ± {std:.3f}" if not math.isnan(std) else f"{d['mean']:.3f}"


def _ci(d: dict) -> str:
    if not d or math.isnan(d.get("ci_low", math.nan)):
        return "—"
    return f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


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
                if not math.isnan(paired["ci_low"]) else f"{paired['mean_diff']:+.3f}"
            pb, ph, verdict = f"{paired['p_better']:.2f}", f"{row['p_holm']:.3g}", row["verdict"]
        else:
            delta, pb, ph, verdict = "(baseline)", "", "", ""
        line = (f"{row['variant'][:18]:<18} {row['n']:>3} {_pm(row['train']):>16} {_pm(row['test']):>16} "
                f"{_ci(row['test']):>16} {delta:>22} {pb:>9} {ph:>8}  {verdict}")
        if row.get("diverged"):
            line += f" ({row['diverged']} diverged)"
        if published and row["variant"] in published:
            tr, te = published[row["variant"]]
            line += f"  | train {tr:.3f} / test {te:.3f}"
        lines.append(line)
    return "\n".join(lines)


def diagnosis(summary: dict) -> str:
    lines = []
    for row in summary["rows"]:
        d = row.get("diagnosis") or {}
        if not d:
            continue
        parts = [f"{row['variant']}: {d['verdict']} (train–test gap {d['gap']:+.3f}"]
        if "best_val_epoch" in d:
            parts.append(f", best validation loss at epoch {d['best_val_epoch']}, "
                         f"then {d['val_loss_rise_after_best']:+.0%}")
        parts.append(")")
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
    if grid:
        lines.append(f"best strength {grid['best']:g} (mean {grid['best_mean']:.3f} ± SE {grid['best_se']:.3f}); "
                     f"largest within one SE: {grid['one_se']:g}")
    if summary.get("winner"):
        lines.append(f"winner: {summary['winner']}")
    return "\n".join(lines)
