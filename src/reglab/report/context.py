"""What every part of a report shares: the study's run, its variants in order, one colour per variant.

>>> palette(["none", "l2", "unit_norm"], baseline="none")
{'none': '#4d4d4d', 'l2': '#1f77b4', 'unit_norm': '#ff7f0e'}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..study import spec as S

BASELINE_COLOUR = "#4d4d4d"
# matplotlib's tab10 without its grey (kept for the baseline), then tab20's lighter partners
_CATEGORICAL = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
                "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"]


def palette(names, baseline: str, strengths: dict | None = None) -> dict:
    """One colour per variant, the same in every figure: the baseline dark grey; a single-strength
    grid coloured by strength (dark = weak, bright = strong, viridis); otherwise categorical."""
    out = {}
    others = [n for n in names if n != baseline]
    if strengths:
        from matplotlib import colormaps

        ordered = sorted((n for n in others if n in strengths), key=lambda n: strengths[n])
        cmap = colormaps["viridis"]
        for i, n in enumerate(ordered):
            out[n] = _hex(cmap(0.05 + 0.85 * i / max(1, len(ordered) - 1)))
        others = [n for n in others if n not in out]
    for i, n in enumerate(others):
        out[n] = _CATEGORICAL[i % len(_CATEGORICAL)]
    out[baseline] = BASELINE_COLOUR
    return {n: out[n] for n in names}


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3])


@dataclass
class Context:
    run: object                     # reglab.study.StudyRun
    summary: dict
    names: list                     # variants in study order
    baseline: str
    metric: str                     # "accuracy" (higher is better) or "mae"
    higher: bool
    colours: dict
    records: dict                   # variant -> records sorted by (split, seed)
    strengths: dict = field(default_factory=dict)   # single-strength grid: variant -> strength
    grid_keys: list = field(default_factory=list)   # the grid's strength names ("value", or e.g. ["l1", "l2"])
    parameter: str = "λ"

    @classmethod
    def of(cls, run) -> Context:
        study, summary = run.study, run.summary
        names = [v.name for v in study.variants]
        records = {n: sorted((r for r in run.records if r["variant"] == n),
                             key=lambda r: (r.get("split", 0), r["seed"])) for n in names}
        strengths, keys = {}, []
        if study.protocol == "grid":
            keys = list(S.values(study.grid))
            if keys == ["value"]:
                strengths = {v.name: float(v.params["value"]) for v in study.variants if "value" in v.params}
        metric = summary["metric"]
        parameter = str(study.grid.get("parameter") or "λ") if study.protocol == "grid" else "λ"
        return cls(run=run, summary=summary, names=names, baseline=study.baseline, metric=metric,
                   higher=metric == "accuracy", colours=palette(names, study.baseline, strengths), records=records,
                   strengths=strengths, grid_keys=keys, parameter=parameter)

    def label(self, name: str) -> str:
        """How a variant is named in legends: a single-strength grid's points as 'λ = 0.001'."""
        if name in self.strengths:
            return f"{self.parameter} = {name}"
        return name

    def row(self, name: str) -> dict:
        return next(r for r in self.summary["rows"] if r["variant"] == name)

    def test_values(self, name: str) -> np.ndarray:
        """The test metric of ``name`` per study seed -- per (split, seed), split by split, in a study of
        several train/test splits (NaN where missing or diverged)."""
        by_run = {(r.get("split", 0), r["seed"]): math.nan if r["diverged"] else
                  r["metrics"].get(f"test_{self.metric}", math.nan) for r in self.records[name]}
        study = self.run.study
        runs = [(k, s) for k in range(getattr(study, "splits", 1)) for s in study.seeds]
        return np.array([by_run.get(run, math.nan) for run in runs], dtype=float)

    @property
    def metric_label(self) -> str:
        return "accuracy" if self.metric == "accuracy" else "mean absolute error"


