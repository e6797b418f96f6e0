"""Decision boundaries of 2-D classification studies (the seeds' moons and circles pictures).

The store keeps metrics, curves and test-set probabilities, not weights, so the report re-trains one
member per variant shown: the study's first seed, with the study's own training settings, through
the same population engine that trained the study (a member equals ``reglab.fit`` of its variant
with that seed). The retrained member's test score is compared with the stored one and the caption
says whether they agree.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import threads
from .context import Context
from .figures import Plot, new_figure, save, tex

MAX_PANELS = 6
RESOLUTION = 200
# a pale surface (blue = class 0, red = class 1) under saturated points of the same hues
POINTS = ("#1f5fa8", "#c0282d")
SURFACE_COLOURS = ("#9ec5e8", "#f7f7f7", "#f4a99b")


def _surface_map():
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("reglab_surface", SURFACE_COLOURS)


def applies(ctx: Context) -> bool:
    ds = ctx.run.dataset
    return ds.task in ("binary", "multiclass") and tuple(ds.X_train.shape[1:]) == (2,)


def chosen(ctx: Context) -> list[str]:
    """Which variants to draw: the baseline and the regularized ones (for a grid: the best strength,
    the 1-SE strength and the strongest, which shows underfitting)."""
    names = [ctx.baseline]
    grid = ctx.summary.get("grid")
    if ctx.strengths and grid:
        by_value = {v: n for n, v in ctx.strengths.items()}
        picks = [grid.get("best"), grid.get("one_se"), max(ctx.strengths.values())]
        names += [by_value[v] for v in picks if v in by_value]
    else:
        names += [n for n in ctx.names if n != ctx.baseline]
        if ctx.run.study.protocol == "grid" and ctx.summary.get("best"):
            ranked = sorted((r for r in ctx.summary["rows"] if r["n"] and r["variant"] != ctx.baseline),
                            key=lambda r: r["test"]["mean"], reverse=ctx.higher)
            names = [ctx.baseline] + [r["variant"] for r in ranked[:MAX_PANELS - 1]]
    seed = ctx.run.study.seeds[0] if ctx.run.study.seeds else None
    drawn = [n for n in names if ctx.records.get(n)
             and not any(r["seed"] == seed and not r.get("split") and r["diverged"] for r in ctx.records[n])]
    return list(dict.fromkeys(drawn))[:MAX_PANELS]   # a member that diverged has no boundary to draw


def retrain(run, names, seed: int) -> dict:
    """name -> the model of variant ``name`` trained with ``seed`` as the study trained it."""
    # A population of a few members gains nothing from threads (and loses much on a busy machine).
    with threads.using(1):
        return _retrain(run, names, seed)


def _retrain(run, names, seed: int) -> dict:
    from ..study.jobs import group_key
    from ..study.train import train_group

    study, ds = run.study, run.dataset
    by_name = {v.name: v for v in study.variants}
    groups: dict[str, list] = {}
    for n in names:
        groups.setdefault(group_key(by_name[n].training), []).append(by_name[n])
    models = {}
    for vs in groups.values():
        result = train_group(study, ds, vs, [seed], progress=False, threads=1)   # as the study trained them
        for i, member in enumerate(result.members):
            models[vs[member["config_index"]].name] = (result.models[i], result.task)
    return models


@torch.no_grad()
def _surface(model, task, xx, yy):
    grid = torch.as_tensor(np.c_[xx.ravel(), yy.ravel()], dtype=torch.get_default_dtype())
    model.eval()
    proba = task.predict(model(grid)).numpy()
    return proba.reshape(xx.shape) if proba.ndim == 1 else proba.reshape(*xx.shape, -1)


def decision_boundaries(ctx: Context, folder: Path | None) -> Plot | None:
    if not applies(ctx):
        return None
    names = chosen(ctx)
    if not names:
        return None
    from ..training import evaluate

    ds = ctx.run.dataset
    seed = ctx.run.study.seeds[0]
    models = retrain(ctx.run, names, seed)
    X = np.concatenate([ds.X_train, ds.X_test])
    span = X.max(axis=0) - X.min(axis=0)
    pad = 0.15 * np.where(span > 0, span, 1 / 0.15)   # a constant feature: one unit either side
    (x0, y0), (x1, y1) = X.min(axis=0) - pad, X.max(axis=0) + pad
    xx, yy = np.meshgrid(np.linspace(x0, x1, RESOLUTION), np.linspace(y0, y1, RESOLUTION))
    binary = ds.task == "binary"
    k = len(names)
    cols = min(k, 3)
    rows = math.ceil(k / cols)
    width = min(9.0, 3.0 * cols + 0.8)
    ratio = (y1 - y0) / (x1 - x0)
    panel = (width - 1.3) / cols
    fig = new_figure(width, rows * (panel * min(max(ratio, 0.5), 1.5) + 0.75) + 0.55)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    n_classes = int(max(ds.y_train.max(), ds.y_test.max())) + 1
    point_colours = list(POINTS) if binary else [colormaps["tab10"](i % 10) for i in range(n_classes)]
    agree, image = [], None
    for ax, name in zip(axes, names):
        model, task = models[name]
        surface = _surface(model, task, xx, yy)
        if binary:
            image = ax.contourf(xx, yy, surface, levels=np.linspace(0, 1, 11), cmap=_surface_map(), vmin=0, vmax=1)
            ax.contour(xx, yy, surface, levels=[0.5], colors="black", linewidths=1.2)
        else:
            cls = surface.argmax(-1)
            ax.contourf(xx, yy, cls, levels=np.arange(n_classes + 1) - 0.5, alpha=0.3,
                        cmap=ListedColormap(point_colours[:n_classes]))
            ax.contour(xx, yy, cls, levels=np.arange(n_classes) + 0.5, colors="black", linewidths=0.8)
        for c in range(n_classes):
            tr, te = ds.y_train == c, ds.y_test == c
            ax.scatter(ds.X_test[te, 0], ds.X_test[te, 1], s=22, marker="^", color=point_colours[c], ec="white",
                       lw=0.5, zorder=3)
            ax.scatter(ds.X_train[tr, 0], ds.X_train[tr, 1], s=30, marker="o", color=point_colours[c], ec="black",
                       lw=0.9, zorder=4)
        score = evaluate(model, (ds.X_test, ds.y_test), task=task)[ctx.metric]
        stored = next((r["metrics"].get(f"test_{ctx.metric}") for r in ctx.records[name]
                       if r["seed"] == seed and not r.get("split")), None)   # split 0: ctx.run.dataset
        agree.append(stored is not None and abs(score - stored) < 1e-6)
        mean = ctx.row(name)["test"]["mean"]
        many = getattr(ctx.run.study, "splits", 1) > 1   # the panel shows split 0's member
        ax.set_title(f"{tex(ctx.label(name))}\nseed {seed}{', split 0' if many else ''}: test {score:.3f} · "
                     f"all {'runs' if many else 'seeds'} {mean:.3f}", fontsize=9)
        ax.set_aspect("equal")
        ax.grid(False)
    for ax in axes[k:]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="none", mfc="#777777", mec="black", ms=6, label=f"train ({len(ds.y_train)})"),
               Line2D([], [], marker="^", ls="none", mfc="#777777", mec="white", ms=6, label=f"test ({len(ds.y_test)})"),
               Line2D([], [], color="black", lw=1.2, label="decision boundary (p = 0.5)" if binary else "decision boundary")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3)
    if image is not None:
        fig.colorbar(image, ax=list(axes[:k]), label="predicted probability of class 1", shrink=0.8)
    png, svg = save(fig, folder, "decision_boundaries")
    names_text = ", ".join(names)
    caption = (f"The predicted probability over the input plane for {names_text}, each re-trained with seed {seed} "
               f"and the study's settings; circles are the {len(ds.y_train)} training points, triangles the "
               f"{len(ds.y_test)} test points, coloured by class. An overfit model bends its boundary around "
               f"individual training points and is confidently wrong between them; a well-regularized one draws "
               f"a smoother boundary that follows the classes' shape. ")
    if all(agree):
        caption += "Each re-trained member reproduced its stored test score exactly."
    else:
        off = [n for n, ok in zip(names, agree) if not ok]
        caption += (f"The re-trained member of {', '.join(off)} did not reproduce its stored test score "
                    f"(the panel title shows the re-trained one).")
    return Plot("decision_boundaries", "Decision boundaries", caption, png, svg, fig)
