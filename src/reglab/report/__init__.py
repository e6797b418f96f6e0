"""Reports of a study: ``index.html`` (one self-contained page), the figures as PNG and SVG, and
``summary.md``, ``results.csv``, ``results.json``.

``write_report(study_name, db, out)`` reads the study from the database alone. Figures: learning
curves, the validation curve (grids of one strength), the test metric per seed with the paired
differences, weight norms and activation sparsity per layer, decision boundaries (2-D
classification data; one member per variant is re-trained, see :mod:`reglab.report.boundary`) and a
heat map (grids of two strengths).
"""

from __future__ import annotations

from pathlib import Path

from ..study import runner
from . import boundary, figures, files, html
from .context import Context

FIGURES = (figures.learning_curves, figures.validation_curve, figures.heat_map, figures.strip_plot,
           boundary.decision_boundaries, figures.weight_norms, figures.sparsity)


def write_report(study_name: str, db, out) -> list[Path]:
    """Write the report of ``study_name`` from the database ``db`` into folder ``out``; returns the
    files written, ``index.html`` first."""
    from ..store import Store

    with Store(db) as store:
        loaded, created, live = _load(store, study_name)
    return _write_report(loaded, out, db, created, live)


def write_from_store(store, study_name: str, out, db=None) -> list[Path]:
    """:func:`write_report` from an open :class:`reglab.store.Store` (an in-memory one too, as
    :class:`reglab.Study` keeps); ``db`` names the database on the page (default: the store's path)."""
    loaded, created, live = _load(store, study_name)
    return _write_report(loaded, out, store.path if db is None else db, created, live)


def _load(store, study_name: str):
    loaded = runner.from_store(store, study_name)
    entry = store.study(study_name) or {}
    return loaded, entry.get("created"), store.running(entry["id"]) if entry else None


def _write_report(loaded, out, db, created, live) -> list[Path]:
    out = Path(out)
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the report folder {str(out)!r}: {exc.strerror}; choose another --out.") from None
    ctx = Context.of(loaded)
    plots = render(ctx, out / "figures")
    summary = loaded.summary
    texts = {
        "index.html": html.page(ctx, plots, {**html.provenance(db, created), "running": live}, _parameters(ctx)),
        "summary.md": files.markdown(summary, [(f"figures/{p.key}.png", p.title) for p in plots]),
        "results.json": files.results_json(summary, loaded.records),
        "results.csv": files.results_csv(loaded.records),
    }
    paths = [_write(out / name, text) for name, text in texts.items()]
    paths += [path for p in plots for path in (p.png, p.svg)]
    return paths


def render(ctx: Context, folder: Path) -> list:
    """Draw every figure that applies to the study; returns the :class:`figures.Plot` objects."""
    import matplotlib

    plots = []
    with matplotlib.rc_context(figures.STYLE):
        for make in FIGURES:
            plot = make(ctx, folder)
            if plot is not None:
                plots.append(plot)
    return plots


def _parameters(ctx: Context):
    try:
        from ..study import spec as S

        ds = ctx.run.dataset
        model = S.builder(ctx.run.study, tuple(ds.X_train.shape[1:]), ds.task)(ctx.baseline)
        return sum(p.numel() for p in model.parameters())
    except Exception:   # noqa: BLE001 - only the count is lost
        return None


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
