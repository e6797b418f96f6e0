"""The report's figures, drawn with matplotlib's object API (Agg canvas, no pyplot state) as PNG and SVG.

Every figure returns a :class:`Plot` (file stem, title, caption, the matplotlib ``Figure``) or
``None`` when the study has nothing to show for it (no grid, no activation layers, data that is not
2-D, ...). With ``folder=None`` a figure is drawn but not saved (``reglab.Study.plot`` shows it in a
notebook). Each variant keeps its colour from :func:`reglab.report.context.palette` in every figure.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as _sp

from ..study.text import fmt
from .context import BASELINE_COLOUR, Context

STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8.5, "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.color": "#dddddd", "grid.linewidth": 0.6, "axes.axisbelow": True, "legend.frameon": False,
    "svg.hashsalt": "reglab", "figure.dpi": 100, "savefig.dpi": 150,
}
WIDTH = 9.0          # inches; at 150 dpi a 1350-pixel PNG, shown at the page's width
TRAIN_COLOUR, TEST_COLOUR = "#3a7ebf", "#c0392b"


@dataclass
class Plot:
    key: str          # file stem: figures/KEY.png and figures/KEY.svg
    title: str
    caption: str      # plain text (escaped where it is shown)
    png: Path | None = None
    svg: Path | None = None
    figure: object = None   # the matplotlib Figure


def tex(text) -> str:
    """User text for matplotlib: a '$' must not start mathtext."""
    return str(text).replace("\\", "\\\\").replace("$", r"\$")


def new_figure(width=WIDTH, height=4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save(fig, folder: Path | None, key: str) -> tuple[Path | None, Path | None]:
    """Write ``fig`` as ``folder/KEY.png`` and ``.svg``; ``folder=None`` writes nothing."""
    if folder is None:
        return None, None
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
        path = folder / f"{key}.{ext}"
        tmp = folder / f"{key}.tmp.{ext}"
        fig.savefig(tmp, format=ext, metadata=meta)
        tmp.replace(path)
        paths.append(path)
        fig.set_layout_engine("none")    # the layout is done: the SVG reuses it (half the drawing time)
    return paths[0], paths[1]


def clip_accuracy(ax, ctx: Context) -> None:
    """An accuracy axis stays within [0, 1]: a t interval over few seeds can reach past 1, which the
    axis should not pretend is possible."""
    if ctx.higher:
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, -0.02), min(high, 1.02))


def legend_columns(labels, width: float = WIDTH) -> int:
    """How many legend columns fit across a figure ``width`` inches wide (about 17 characters an inch
    at the legend's font size), so that a bottom legend is never cut at the edges."""
    per_entry = max(len(str(x)) for x in labels) + 6 if labels else 1
    return max(1, min(len(labels), int(width * 17 // per_entry)))


def mean_ci(matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-wise mean and t-based 95% interval over the finite rows (NaN where fewer than 2)."""
    m = np.asarray(matrix, dtype=float)
    finite = np.isfinite(m)
    n = finite.sum(axis=0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(np.where(finite, m, np.nan), axis=0)
        std = np.nanstd(np.where(finite, m, np.nan), axis=0, ddof=1)
        half = np.where(n >= 2, _sp.t.ppf(0.975, np.maximum(n - 1, 1)) * std / np.sqrt(np.maximum(n, 1)), np.nan)
    return mean, mean - half, mean + half


def log_labels(ax):
    """Plain numbers on a log y axis (0.3, not 3×10⁻¹); minor ticks labelled when it spans < 1 decade."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from matplotlib.ticker import LogLocator

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    lo, hi = ax.get_ylim()
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 99
    if 1 <= decades < 2.5:              # 0.2, 0.5, 1, 2: more than one label, none crowded
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if decades < 1 else NullFormatter())


SHIFTED = (" Layers are matched by their order in the model and named as in the baseline: a variant that "
           "inserts a layer (e.g. a Dropout) numbers the later modules differently.")


# ------------------------------------------------------------------------------- learning curves


def _aligned(records, key):
    """Each record's ``history[key]`` on the epochs of the longest run (NaN after a run ended)."""
    runs = [r for r in records if r["history"].get("epoch") and len(r["history"].get(key, [])) == len(r["history"]["epoch"])]
    if not runs:
        return None, None
    grid = np.asarray(max(runs, key=lambda r: r["history"]["epoch"][-1])["history"]["epoch"], dtype=float)
    rows = []
    for r in runs:
        e = np.asarray(r["history"]["epoch"], dtype=float)
        v = np.asarray(r["history"][key], dtype=float)
        rows.append(np.interp(grid, e, v, left=np.nan, right=np.nan) if e.size > 1 else
                    np.where(grid == e[0], v[0], np.nan))
    return grid, np.array(rows)


def learning_curves(ctx: Context, folder: Path | None) -> Plot | None:
    from matplotlib.ticker import MaxNLocator

    metric = ctx.metric
    any_history = [r for recs in ctx.records.values() for r in recs if r["history"].get("epoch")]
    if not any_history:
        return None
    keys = any_history[0]["history"]
    loss_key = "data_loss" if "data_loss" in keys else "loss"
    loss_name = "mean squared error" if ctx.run.dataset.task == "regression" else "cross-entropy"
    has_val = f"val_{loss_key}" in keys
    cols = [("", "training"), ("val_", "validation")] if has_val else [("", "training")]
    fig = new_figure(WIDTH, 6.2)
    axes = fig.subplots(2, len(cols), sharex=True, sharey="row", squeeze=False)
    marked = []
    for name in ctx.names:
        colour, recs = ctx.colours[name], ctx.records[name]
        best_epoch = None
        if has_val:
            grid, vals = _aligned(recs, f"val_{loss_key}")
            if grid is not None:
                mean = mean_ci(vals)[0]
                if np.isfinite(mean).any():
                    i = int(np.nanargmin(mean))
                    best_epoch = (grid[i], i)
        for c, (prefix, _) in enumerate(cols):
            for r, key in enumerate((f"{prefix}{metric}", f"{prefix}{loss_key}")):
                grid, vals = _aligned(recs, key)
                if grid is None:
                    continue
                mean, low, high = mean_ci(vals)
                ax = axes[r, c]
                ax.plot(grid, mean, color=colour, lw=1.4, label=tex(ctx.label(name)) if (r, c) == (0, 0) else None)
                ax.fill_between(grid, low, high, color=colour, alpha=0.18, lw=0)
                if best_epoch is not None and prefix == "val_":
                    ax.plot([best_epoch[0]], [mean[best_epoch[1]]], "o", ms=6, mfc="white", mec=colour, mew=1.8,
                            zorder=5)
                    marked.append(name)
    for c, (_, title) in enumerate(cols):
        axes[0, c].set_title(f"{title} {ctx.metric_label}")
        axes[1, c].set_title(f"{title} {loss_name}, without the penalty")
        axes[1, c].set_xlabel("epoch")
        axes[1, c].xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        axes[1, c].set_yscale("log")
    for ax in axes[1]:
        log_labels(ax)
    clip_accuracy(axes[0, 0], ctx)
    axes[0, 0].set_ylabel(ctx.metric_label)
    axes[1, 0].set_ylabel(f"{loss_name} (log scale)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if marked:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], marker="o", ls="none", mfc="white", mec="black", mew=1.5))
        labels.append("lowest mean validation loss")
    fig.legend(handles, labels, loc="outside lower center", ncol=legend_columns(labels))
    png, svg = save(fig, folder, "learning_curves")
    from ..study.text import runs

    n = runs({"seeds": len(ctx.run.study.seeds), "splits": getattr(ctx.run.study, "splits", 1)})
    caption = (f"Mean over the {n} (line) with its 95% confidence band, per epoch. Overfitting shows as "
               f"a training curve that keeps improving while the validation curve stalls or turns back; the "
               f"circle marks the epoch of the lowest mean validation {loss_name}, and a validation loss that "
               f"rises after it is the classic sign. The loss is the data loss without the penalty, so that "
               f"variants with different penalties are comparable.")
    if ctx.run.dataset.X_val is None:
        caption += " The validation data are the test part, as in the seeds' tutorials."
    if any(r["epochs_run"] < max(r2["epochs_run"] for r2 in ctx.run.records) for r in ctx.run.records):
        caption += " Where members stopped early, the mean is over those still training."
    return Plot("learning_curves", "Learning curves", caption, png, svg, fig)


# ------------------------------------------------------------------------------ validation curve


def validation_curve(ctx: Context, folder: Path | None) -> Plot | None:
    grid = ctx.summary.get("grid")
    if not ctx.strengths or not grid or len(ctx.strengths) < 2 or not math.isfinite(grid.get("best", math.nan)):
        return None   # (no strength has a score when every member diverged)
    names = sorted(ctx.strengths, key=ctx.strengths.get)
    lam = np.array([ctx.strengths[n] for n in names])
    fig = new_figure(WIDTH * 0.85, 5.0)
    ax = fig.subplots()
    for part, colour, style, marker in (("train", TRAIN_COLOUR, "--", "s"), ("test", TEST_COLOUR, "-", "o")):
        d = [ctx.row(n)[part] for n in names]
        mean = np.array([x["mean"] for x in d])
        low = np.array([x["ci_low"] for x in d])
        high = np.array([x["ci_high"] for x in d])
        err = np.vstack([mean - low, high - mean])
        ax.errorbar(lam, mean, yerr=np.where(np.isfinite(err), err, 0), color=colour, ls=style, marker=marker,
                    ms=4.5, lw=1.4, capsize=2.5, label=f"{part} {ctx.metric_label} (mean, 95% CI)")
        if ctx.baseline not in ctx.strengths:
            b = ctx.row(ctx.baseline)[part]
            ax.axhline(b["mean"], color=colour, ls=":", lw=1.2,
                       label=f"{part}, {tex(ctx.baseline)} ({ctx.parameter} = 0)")
            if math.isfinite(b["ci_low"]):
                ax.axhspan(b["ci_low"], b["ci_high"], color=colour, alpha=0.08, lw=0)
    ax.set_xscale("log")
    same = grid["one_se"] == grid["best"]
    on = grid.get("chosen_on", "test")
    ax.axvline(grid["best"], color="black", lw=1.2, label=f"best {ctx.parameter} = {grid['best']:g} (on {on} scores)"
               + (" (also the largest within 1 SE)" if same else ""))
    if not same:
        ax.axvline(grid["one_se"], color="black", lw=1.2, ls="--",
                   label=f"largest {ctx.parameter} within 1 SE = {grid['one_se']:g}")
    if math.isfinite(grid.get("best_se", math.nan)):
        edge = grid["best_mean"] - grid["best_se"] if ctx.higher else grid["best_mean"] + grid["best_se"]
        ax.axhline(edge, color="#888888", lw=0.8, ls="-.",
                   label=f"best {on} mean − 1 SE" if ctx.higher else f"best {on} mean + 1 SE")
    ax.set_xlabel(f"{ctx.parameter} (log scale)")
    ax.set_ylabel(ctx.metric_label)
    ax.set_title(f"{ctx.metric_label} against the strength {ctx.parameter}")
    clip_accuracy(ax, ctx)
    handles, labels = ax.get_legend_handles_labels()
    first = [i for i, label in enumerate(labels) if "(mean, 95% CI)" in label]
    order = first + [i for i in range(len(labels)) if i not in first]
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncol=2)
    png, svg = save(fig, folder, "validation_curve")
    caption = (f"Train and test {ctx.metric_label} against {ctx.parameter} (mean over the seeds with its 95% "
               f"confidence interval). Weak penalties leave the train–test gap of the unregularized model (dotted); "
               f"too strong a penalty pulls both curves down (underfitting). The solid line marks the strength "
               f"with the best mean test score, the dashed one the largest strength whose mean is within one "
               f"standard error of it (the 1-SE rule: as much regularization as the noise allows).")
    return Plot("validation_curve", "Validation curve", caption, png, svg, fig)


# ------------------------------------------------------------------------------------ strip plot


def _dodge(values, width=0.34):
    """Horizontal offsets that spread equal values side by side (a dot plot, no randomness)."""
    offsets = np.zeros(len(values))
    keys = np.round(np.asarray(values, dtype=float), 9)
    for v in np.unique(keys[np.isfinite(keys)]):
        idx = np.flatnonzero(keys == v)
        step = min(width / max(len(idx) - 1, 1), 0.045)
        offsets[idx] = (np.arange(len(idx)) - (len(idx) - 1) / 2) * step
    return offsets


def strip_plot(ctx: Context, folder: Path | None) -> Plot | None:
    names = ctx.names
    others = [n for n in names if n != ctx.baseline]
    fig = new_figure(WIDTH, 4.6 if len(names) <= 6 else 5.2)
    axes = fig.subplots(1, 2 if others else 1, squeeze=False, width_ratios=[len(names), max(len(others), 1)]
                        if others else None)[0]
    base = ctx.test_values(ctx.baseline)
    rotate = len(names) > 5 or max(len(ctx.label(n)) for n in names) > 12

    def panel(ax, series, title, ylabel, reference, reference_label):
        for x, (name, values, summary) in enumerate(series):
            colour = ctx.colours[name]
            ok = np.isfinite(values)
            ax.scatter(x + _dodge(values)[ok] - 0.12, values[ok], s=14, color=colour, alpha=0.75, lw=0, zorder=3)
            mean, low, high = summary
            if math.isfinite(mean):
                ax.errorbar([x + 0.22], [mean], yerr=[[mean - low], [high - mean]] if math.isfinite(low) else None,
                            fmt="D", color=colour, mec="black", mew=0.6, ms=5.5, capsize=3.5, lw=1.5, zorder=4)
        ax.axhline(reference, color=BASELINE_COLOUR, lw=1, ls="--", zorder=2, label=reference_label)
        ax.set_xticks(range(len(series)), [tex(ctx.label(s[0])) for s in series], rotation=35 if rotate else 0,
                      ha="right" if rotate else "center")
        ax.set_xlim(-0.6, len(series) - 0.4)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="x", visible=False)
        ax.legend(loc="best")

    series = []
    for n in names:
        d = ctx.row(n)["test"]
        series.append((n, ctx.test_values(n), (d["mean"], d["ci_low"], d["ci_high"])))
    base_row = ctx.row(ctx.baseline)["test"]
    panel(axes[0], series, f"test {ctx.metric_label} per seed", f"test {ctx.metric_label}", base_row["mean"],
          f"{tex(ctx.baseline)} mean")
    clip_accuracy(axes[0], ctx)
    if others:
        diffs = []
        for n in others:
            p = ctx.row(n).get("paired", {})
            diffs.append((n, ctx.test_values(n) - base, (p.get("mean_diff", math.nan), p.get("ci_low", math.nan),
                                                          p.get("ci_high", math.nan))))
        panel(axes[1], diffs, f"difference to {tex(ctx.baseline)} on the same seed",
              f"Δ test {ctx.metric_label}", 0.0, "no difference")
    png, svg = save(fig, folder, "per_seed")
    better = "above" if ctx.higher else "below"
    caption = (f"Left: the test {ctx.metric_label} of every seed (dots; equal values side by side), with the mean "
               f"and its 95% confidence interval (diamond); the dashed line is the baseline's mean. Right: the "
               f"paired difference to the baseline on the same seed — the quantity the verdicts test. A variant "
               f"helps when its interval on the right lies {better} zero; the spread of the dots on the left "
               f"shows how much a single run (like the seeds' one figure) can mislead.")
    return Plot("per_seed", "Test metric per seed", caption, png, svg, fig)


# -------------------------------------------------------------------- weight norms and sparsity


def _layer_values(ctx: Context, field_name: str, key: str) -> tuple[list, dict, dict, bool]:
    """``extra[field_name][layer][key]`` per variant and layer, over the seeds.

    Layers are matched by their position (the k-th weighted or activation layer) when every member
    has the same number of them, so that a variant that inserts a layer (a Dropout shifts the module
    names after it) still lines up with the baseline; otherwise by module name. Returns the layer
    keys, ``values[variant][layer]`` (lists over seeds), the labels, and whether names were shifted.
    """
    per_member = [(n, [(layer, d) for layer, d in ((r.get("extra") or {}).get(field_name) or {}).items() if key in d])
                  for n in ctx.names for r in ctx.records[n] if not r["diverged"]]   # diverged: ~inf, no score
    per_member = [(n, layers) for n, layers in per_member if layers]
    if not per_member:
        return [], {}, {}, False
    by_position = len({len(layers) for _, layers in per_member}) == 1
    reference = next((layers for n, layers in per_member if n == ctx.baseline), per_member[0][1])
    types = _layer_types(ctx)
    keys: list = []
    values: dict = {}
    shifted = False
    for n, layers in per_member:
        for i, (layer, d) in enumerate(layers):
            k = i if by_position else layer
            shifted |= by_position and layer != reference[i][0]
            if k not in keys:
                keys.append(k)
            values.setdefault(n, {}).setdefault(k, []).append(float(d[key]))
    labels = {}
    for k in keys:
        name = reference[k][0] if by_position else k
        labels[k] = f"{name}: {types[name]}" if name in types else str(name)
    return keys, values, labels, shifted


def _layer_types(ctx: Context) -> dict:
    """Module name -> class name in the baseline's model (empty if it cannot be built here)."""
    try:
        from ..study import spec as S

        ds = ctx.run.dataset
        model = S.builder(ctx.run.study, tuple(ds.X_train.shape[1:]), ds.task)(ctx.baseline)
        return {name: type(m).__name__ for name, m in model.named_modules() if name}
    except Exception:   # noqa: BLE001 - a factory that cannot be imported here only loses the labels
        return {}


def _per_layer_panel(ax, ctx: Context, layers, values, title, ylabel, labels):
    if ctx.strengths and len(ctx.strengths) >= 2:
        names = sorted((n for n in ctx.names if n in ctx.strengths and n in values), key=ctx.strengths.get)
        lam = np.array([ctx.strengths[n] for n in names])
        markers = "osD^v<>"
        for i, layer in enumerate(layers):
            stats = [mean_ci(np.array(values[n].get(layer, [np.nan]))[:, None]) for n in names]
            mean = np.array([s[0][0] for s in stats])
            low = np.array([s[1][0] for s in stats])
            high = np.array([s[2][0] for s in stats])
            colour = f"C{i % 10}"
            lines = ax.errorbar(lam, mean, yerr=np.where(np.isfinite([mean - low, high - mean]), [mean - low, high - mean], 0),
                                marker=markers[i % len(markers)], color=colour, ms=4, capsize=2, lw=1.2,
                                label=f"layer {tex(labels.get(layer, layer))}")
            if ctx.baseline in values and layer in values[ctx.baseline]:
                ax.axhline(np.mean(values[ctx.baseline][layer]), color=lines[0].get_color(), ls=":", lw=1.2)
        ax.set_xscale("log")
        ax.set_xlabel(f"{ctx.parameter} (log scale); dotted: {tex(ctx.baseline)}")
    else:
        names = [n for n in ctx.names if n in values]
        width = 0.8 / max(len(names), 1)
        for j, n in enumerate(names):
            stats = [mean_ci(np.array(values[n].get(layer, [np.nan]))[:, None]) for layer in layers]
            mean = np.array([s[0][0] for s in stats])
            err = np.array([[s[0][0] - s[1][0] for s in stats], [s[2][0] - s[0][0] for s in stats]])
            x = np.arange(len(layers)) + (j - (len(names) - 1) / 2) * width
            ax.bar(x, mean, width * 0.92, color=ctx.colours[n], label=tex(ctx.label(n)),
                   yerr=np.where(np.isfinite(err), err, 0), capsize=2, error_kw={"lw": 0.8})
        ax.set_xticks(range(len(layers)), [tex(labels.get(layer, layer)) for layer in layers])
        ax.set_xlabel("layer")
        ax.grid(axis="x", visible=False)
    ax.set_title(title)
    ax.set_ylabel(ylabel)


def weight_norms(ctx: Context, folder: Path | None) -> Plot | None:
    panels = [("l2", "L2 norm of the kernel"), ("max_unit_norm", "largest per-unit L2 norm"), ("l1", "L1 norm of the kernel")]
    data = [(title, *_layer_values(ctx, "weight_norms", key)) for key, title in panels]
    if not any(layers for _, layers, *_ in data):
        return None
    fig = new_figure(WIDTH, 3.9)
    axes = fig.subplots(1, 3)
    for ax, (title, layers, values, labels, _) in zip(axes, data):
        _per_layer_panel(ax, ctx, layers, values, title, "norm", labels)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=legend_columns(names))
    png, svg = save(fig, folder, "weight_norms")
    caption = (f"Norms of each weighted layer's kernel after training, mean over the seeds with a 95% interval, "
               f"against the baseline {ctx.baseline}. A weight penalty should shrink the norms of the layer it "
               f"acts on (L2 the L2 norm, L1 the L1 norm); a unit-norm or max-norm constraint caps the largest "
               f"per-unit norm at its bound. A norm that did not move means the regularizer did not act."
               + (SHIFTED if any(d[-1] for d in data) else ""))
    return Plot("weight_norms", "Weight norms per layer", caption, png, svg, fig)


def sparsity(ctx: Context, folder: Path | None) -> Plot | None:
    panels = [("zero_fraction", "fraction of exact zeros", "fraction"), ("mean_activation", "mean activation", "mean")]
    data = [(title, ylabel, *_layer_values(ctx, "sparsity", key)) for key, title, ylabel in panels]
    if not any(layers for _, _, layers, *_ in data):
        return None
    fig = new_figure(WIDTH * 0.8, 3.9)
    axes = fig.subplots(1, 2)
    for ax, (title, ylabel, layers, values, labels, _) in zip(axes, data):
        _per_layer_panel(ax, ctx, layers, values, title, ylabel, labels)
    axes[0].set_ylim(0, 1.02)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=legend_columns(names, WIDTH * 0.8))
    png, svg = save(fig, folder, "sparsity")
    caption = ("Outputs of each activation layer on the test data (eval mode), mean over the seeds with a 95% "
               "interval. An L1 activity penalty on a ReLU's output drives activations to exactly zero (a higher "
               "fraction of zeros: a sparser representation); one on the pre-activations, before the ReLU, "
               "shrinks them toward zero, which lowers the mean activation but need not add exact zeros. "
               "Bars that match the baseline mean the penalty did not act." + (SHIFTED if any(d[-1] for d in data) else ""))
    return Plot("sparsity", "Activation sparsity per layer", caption, png, svg, fig)


# --------------------------------------------------------------------------------------- heat map


def heat_map(ctx: Context, folder: Path | None) -> Plot | None:
    if ctx.run.study.protocol != "grid" or len(ctx.grid_keys) != 2:
        return None
    from ..study import spec as S

    grid = S.values(ctx.run.study.grid)
    ky, kx = ctx.grid_keys
    ys, xs = sorted(grid[ky]), sorted(grid[kx])
    mean = np.full((len(ys), len(xs)), np.nan)
    for row in ctx.summary["rows"]:
        p = row.get("params") or {}
        if ky in p and kx in p and p[ky] in ys and p[kx] in xs:
            mean[ys.index(p[ky]), xs.index(p[kx])] = row["test"]["mean"]
    if not np.isfinite(mean).any():
        return None
    fig = new_figure(min(WIDTH, 2.2 + 0.9 * len(xs)), 1.4 + 0.55 * len(ys))
    ax = fig.subplots()
    cmap = "viridis" if ctx.higher else "viridis_r"
    image = ax.imshow(mean, cmap=cmap, aspect="auto", origin="lower")
    lo, hi = np.nanmin(mean), np.nanmax(mean)
    best = np.unravel_index(np.nanargmax(mean) if ctx.higher else np.nanargmin(mean), mean.shape)
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(mean[i, j]):
                t = (mean[i, j] - lo) / (hi - lo) if hi > lo else 0.5
                bright = t > 0.55 if ctx.higher else t < 0.45
                ax.text(j, i, f"{mean[i, j]:.3f}", ha="center", va="center", fontsize=8,
                        color="black" if bright else "white", fontweight="bold" if (i, j) == best else "normal")
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    ax.set_xlabel(tex(kx))
    ax.set_ylabel(tex(ky))
    ax.grid(False)
    title = f"mean test {ctx.metric_label}"
    if ctx.baseline in ctx.records and ctx.baseline not in ctx.strengths and not ctx.row(ctx.baseline).get("params"):
        title += f" ({tex(ctx.baseline)}: {fmt(ctx.row(ctx.baseline)['test']['mean'])})"
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=f"test {ctx.metric_label}")
    png, svg = save(fig, folder, "heat_map")
    caption = (f"Mean test {ctx.metric_label} over the seeds for every pair of strengths {ky} × {kx}; the red box "
               f"is the best pair. Look for a plateau rather than a single bright cell: a lone best cell among "
               f"poorer neighbours is likely noise (compare the confidence intervals in the table).")
    return Plot("heat_map", f"Heat map of {ky} × {kx}", caption, png, svg, fig)
