"""Studies in a notebook: :class:`Study`, a thin layer over :mod:`reglab.study` and :mod:`reglab.report`.

``reglab.Study`` defines a study from a TOML file, a dict, or keyword arguments named after the
file's sections; ``run()`` trains (or resumes) it exactly as ``reglab run`` does, and the results
come back as pandas DataFrames, the report's answer and statistics table (shown as HTML in Jupyter),
matplotlib figures and the report folder::

    study = reglab.Study("examples/moons_l2_grid.toml", seeds=5, epochs=300)
    study.run()                        # a progress bar in Jupyter; resumes from db= when given
    study.summary                      # one row per variant: statistics, verdict, diagnosis
    study.plot.validation_curve()      # a matplotlib Figure, shown inline
    study.report("moons-grid-report")  # index.html, figures, summary.md, results.csv/json

The statistics, verdicts, texts and figures are those of the CLI and the report (nothing here
computes them again). Errors a user can fix raise :class:`reglab.study.StudyError` with one line.
"""

from __future__ import annotations

import copy
import difflib
import html as _html
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .study import spec as S
from .study.spec import StudyError

__all__ = ["Plots", "Study", "StudyError", "Summary"]

SECTIONS = tuple(sorted(S.TOP_KEYS))
TABLES = ("data", "model", "training", "grid", "variants")   # merged key by key into a file's tables
MEMORY = "memory"   # how an in-memory store is named in messages


class Study:
    """A regularization study to run and explore in Python or a notebook.

    ``Study(source=None, *, db=None, epochs=None, **sections)``:

    - ``source``: a study file (path), a dict shaped like one, a :class:`reglab.study.Study`, or
      nothing;
    - ``sections``: the file's top-level keys as keyword arguments -- ``name``, ``question``,
      ``protocol``, ``seeds``, ``baseline``, ``data={...}``, ``model={...}``, ``training={...}``,
      ``variants={...}``, ``grid={...}``. With a ``source`` they override it: a scalar replaces the
      file's value, a table replaces only the keys it names (``training={"epochs": 300}`` keeps the
      file's other training settings; ``variants={"l2": {...}}`` adds or replaces that variant);
    - ``epochs``: a shortcut for ``training={"epochs": N}`` (``reglab run --epochs``);
    - ``db``: a SQLite file that keeps every result (created if missing), as ``reglab run --db``:
      results survive the Python process, and running again resumes. Without it the results are
      kept in memory, for this object's life only.

    The study is validated at once; a definition that cannot run raises :class:`StudyError`.
    """

    def __init__(self, source=None, /, *, db=None, epochs: int | None = None, **sections):
        raw, base_dir = _definition(source, sections)
        self._raw, self._base_dir = raw, base_dir
        self._epochs = epochs
        self.db = None if db is None else Path(db).expanduser()
        self._memory = None        # the in-memory store (db=None), kept open for this object's life
        self._run = None           # the reglab.study.StudyRun of the last run()
        self._ctx = None
        self._spec = self._definition()

    @classmethod
    def from_db(cls, name: str, db) -> Study:
        """The stored study ``name`` of database ``db`` (a study run by ``reglab run`` or by another
        ``Study``), with its results as stored: no training, no study file needed."""
        from .study import runner
        from .store import Store

        path = Path(db).expanduser()
        if not path.is_file():
            raise StudyError(f"no database at {str(path)!r}; run a study first or check the path.")
        with _friendly(), Store(path) as store:
            entry = store.study(name)
            if entry is None:
                known = ", ".join(s["name"] for s in store.studies()) or "none"
                raise StudyError(f"no study {name!r} in {path}; the studies there: {known}.")
            loaded = runner.from_store(store, name)
        study = cls({**entry["spec"], "seeds": loaded.study.seeds}, db=path)   # run() resumes the stored seeds
        study._run = loaded
        return study

    # ------------------------------------------------------------------------------ definition

    def _definition(self) -> S.Study:
        """A freshly validated study (a run changes its study: a grid's refined strengths, seeds
        added by ``until_clear``)."""
        with _friendly():
            return S.from_dict(self._raw, base_dir=self._base_dir, epochs=self._epochs)

    @property
    def definition(self) -> S.Study:
        """The validated :class:`reglab.study.Study` (after a run: with a grid's refined strengths)."""
        return self._run.study if self._run is not None else self._spec

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def question(self) -> str:
        return self._spec.question

    # ------------------------------------------------------------------------------------ run

    def run(self, progress: bool | None = None, echo=None, *, executor=None, task_size: int | None = None,
            until_clear: int | None = None) -> Study:
        """Train the study, or resume it: (configuration, seed) pairs already in the store are not
        trained again. Returns the study itself, so that ``study.run()`` shows the answer in Jupyter.

        ``progress``: a progress bar per population (default: on in Jupyter, through tqdm's notebook
        bar, and on a terminal); ``echo``: a function that gets one line per step, e.g. ``print``
        (what ``reglab run`` prints while it trains, and how many members came from the store).
        ``executor``, ``task_size`` and ``until_clear`` are those of :func:`reglab.study.run`
        (e.g. ``executor=reglab.study.dask.DaskExecutor(workers=2)``, ``until_clear=40``)."""
        from .study import checks, runner

        if progress is None and _in_jupyter():
            progress = True
        spec = self._definition()
        where = str(self.db) if self.db is not None else MEMORY
        start = time.perf_counter()
        with _friendly():
            dataset = checks.prepare(spec)    # a study that cannot run is rejected before the store is touched
            with self._store() as store:
                if echo is not None:
                    entry = store.study(spec.name)
                    if entry and entry["n_results"]:
                        echo(f"resuming {spec.name!r}: {entry['n_results']} results in {where}")
                run_ = runner.run(spec, store, dataset=dataset, progress=progress, echo=echo, executor=executor,
                                  task_size=task_size, until_clear=until_clear)
        if echo is not None:
            echo(f"{run_.trained} members trained, {len(run_.records) - run_.trained} from {where}, "
                 f"{time.perf_counter() - start:.1f} s")
        self._run, self._ctx = run_, None
        return self

    def _store(self):
        from contextlib import nullcontext

        from .store import Store

        if self.db is not None:
            return Store(self.db)
        if self._memory is None:
            self._memory = Store(":memory:")
        return nullcontext(self._memory)

    def close(self) -> None:
        """Let go of the in-memory store (its results are lost); a ``db`` file keeps them."""
        if self._memory is not None:
            self._memory.close()
            self._memory = None

    def _done(self):
        if self._run is None:
            raise StudyError(f"study {self.name!r} has not run yet: call .run() first (with db=, it resumes "
                             f"from the results stored there).")
        return self._run

    @property
    def study_run(self):
        """The :class:`reglab.study.StudyRun` of the last run: ``records`` (one dict per variant ×
        seed, as the store keeps them), ``summary`` (the dict ``reglab run`` prints) and ``dataset``."""
        return self._done()

    # -------------------------------------------------------------------------------- results

    @property
    def results(self):
        """One row per variant × seed: the variant, its strength(s) (grid), the train/test split (a
        study of several splits: one row per variant × split × seed), the seed, the train,
        validation and test metric and losses (NaN for a member that diverged), ``epochs_run``,
        ``best_epoch``, ``stopped_epoch`` (<NA> when it ran every epoch) and ``diverged``."""
        run_ = self._done()
        order = {v.name: i for i, v in enumerate(run_.study.variants)}
        splits = getattr(run_.study, "splits", 1) > 1   # several train/test splits: runs are (split, seed)
        rows = []
        for r in sorted(run_.records, key=lambda r: (order.get(r["variant"], len(order)), r.get("split", 0), r["seed"])):
            extra = r.get("extra") or {}
            stopped = extra.get("stopped_epoch", -1)
            rows.append({"variant": r["variant"], **r["params"], **({"split": r.get("split", 0)} if splits else {}),
                         "seed": r["seed"],
                         **({k: math.nan for k in r["metrics"]} if r["diverged"] else r["metrics"]),
                         "epochs_run": r["epochs_run"], "best_epoch": extra.get("best_epoch", -1),
                         "stopped_epoch": None if stopped is None or stopped < 0 else stopped,
                         "diverged": bool(r["diverged"])})
        frame = pd.DataFrame(rows, columns=_columns(rows, ["variant", *_param_keys(run_.study), *(["split"] if splits else []), "seed"]))
        if "stopped_epoch" in frame:
            frame["stopped_epoch"] = frame["stopped_epoch"].astype("Int64")
        frame.attrs.update(metric=run_.summary["metric"], study=self.name)
        return frame

    @property
    def summary(self):
        """The statistics table, one row per variant (indexed by name): n, mean ± std and 95% CI of
        the train and test metric, the paired difference to the baseline (``delta``) with its CI,
        P(better), the Holm-corrected p-value, the verdict (with how many seeds diverged), the
        smallest difference these seeds could detect when unclear, and the fit diagnosis. In Jupyter
        it shows as the report's answer and table."""
        from .study.text import verdict_text

        s = self._done().summary
        m = s["metric"]
        rows = []
        for row in s["rows"]:
            p = row.get("paired") or {}
            tr, te = row["train"], row["test"]
            unclear = row.get("verdict") == "no clear difference"
            rows.append({
                "variant": row["variant"], **row.get("params", {}), "n": row["n"],
                f"train_{m}": tr["mean"], f"train_{m}_std": tr["std"],
                f"test_{m}": te["mean"], f"test_{m}_std": te["std"],
                f"test_{m}_ci_low": te["ci_low"], f"test_{m}_ci_high": te["ci_high"],
                "delta": p.get("mean_diff", math.nan), "delta_ci_low": p.get("ci_low", math.nan),
                "delta_ci_high": p.get("ci_high", math.nan), "p_better": p.get("p_better", math.nan),
                "p_holm": row.get("p_holm", math.nan),
                "verdict": verdict_text(row) or ("(baseline)" if row["variant"] == s["baseline"] else ""),
                "detectable": p.get("mde", math.nan) if unclear else math.nan,
                "fit": (row.get("diagnosis") or {}).get("verdict", ""),
                "diverged": row.get("diverged", 0), "epochs_run": row.get("epochs_run", math.nan)})
        frame = Summary(pd.DataFrame(rows, columns=_columns(rows, ["variant", *_param_keys(self._run.study), "n"]))
                        .set_index("variant"))
        frame.attrs.update(metric=m, baseline=s["baseline"], winner=s.get("winner"), best=s.get("best"),
                           study=self.name)
        object.__setattr__(frame, "_reglab_html", self._summary_html())
        return frame

    @property
    def diagnosis(self):
        """The fit diagnosis per variant (indexed by name): the verdict (overfit, underfit, good fit,
        diverged, ...) and its reason, the train–test gap with its CI, the epoch of the lowest mean
        validation loss and how far it rose after it, the ensemble of the seeds' members against the
        mean member, and per layer the kernel L2 norms and the fraction of zero activations."""
        rows = []
        for row in self._done().summary["rows"]:
            d = row.get("diagnosis") or {}
            gap_ci = d.get("gap_ci") or [math.nan, math.nan]
            rows.append({"variant": row["variant"], "fit": d.get("verdict", ""), "reason": d.get("reason", ""),
                         "gap": d.get("gap", math.nan), "gap_ci_low": gap_ci[0], "gap_ci_high": gap_ci[1],
                         "best_val_epoch": d.get("best_val_epoch"),
                         "val_loss_rise_after_best": d.get("val_loss_rise_after_best", math.nan),
                         "ensemble_accuracy": d.get("ensemble_accuracy", math.nan),
                         "mean_member_accuracy": d.get("mean_member_accuracy", math.nan),
                         "kernel_l2": {k: v.get("l2") for k, v in (d.get("weight_norms") or {}).items()},
                         "zero_activations": {k: v.get("zero_fraction") for k, v in (d.get("sparsity") or {}).items()},
                         "diverged": row.get("diverged", 0)})
        frame = pd.DataFrame(rows).set_index("variant")
        frame["best_val_epoch"] = frame["best_val_epoch"].astype("Int64")
        return frame

    @property
    def winner(self) -> str | None:
        """The variant better than the baseline after the Holm correction (the study's best when it
        is one of them), or None; :attr:`no_winner` then says why."""
        return self._done().summary.get("winner")

    @property
    def no_winner(self) -> str | None:
        """Why there is no winner (None when there is one)."""
        return self._done().summary.get("no_winner")

    @property
    def best(self) -> str | None:
        """The study's one best variant (in a grid: the strength chosen on validation), winner or not."""
        return self._done().summary.get("best")

    @property
    def snippet(self) -> str | None:
        """The winning configuration as runnable PyTorch code (what ``reglab run`` prints), or None."""
        return self._done().summary.get("snippet") or None

    @property
    def text(self) -> str:
        """What ``reglab run`` prints: the statistics table, the diagnosis and the winning code."""
        from .study.text import console

        return console(self._done().summary)

    # ------------------------------------------------------------------------ report, figures

    def report(self, out) -> Path:
        """Write the report folder ``out`` (``index.html``, ``figures/`` as PNG and SVG,
        ``summary.md``, ``results.csv``, ``results.json``), as ``reglab report`` does from the
        store; returns the path of ``index.html``."""
        from . import report as R

        with _friendly():
            if self.db is not None:
                return R.write_report(self.name, self.db, out)[0]
            self._done()
            if self._memory is None:
                raise StudyError(f"the results of study {self.name!r} were in memory and are closed; run it again.")
            return R.write_from_store(self._memory, self.name, out, db="in memory (this Python session)")[0]

    @property
    def plot(self) -> Plots:
        """The report's figures as matplotlib Figures: ``learning_curves()``, ``validation_curve()``,
        ``per_seed()``, ``decision_boundaries()``, ``weight_norms()``, ``sparsity()``, ``heat_map()``."""
        return Plots(self)

    def _context(self):
        from .report.context import Context

        run_ = self._done()
        if self._ctx is None:
            self._ctx = Context.of(run_)
        return self._ctx

    # -------------------------------------------------------------------------------- display

    def __repr__(self) -> str:
        spec = self.definition
        state = (f"{len(self._run.records)} results" if self._run is not None else "not run")
        return (f"<reglab.Study {spec.name!r}: {spec.protocol}, {len(spec.variants)} variants × "
                f"{len(spec.seeds)} seeds, {state}>")

    def __str__(self) -> str:
        return self.text if self._run is not None else repr(self)

    def _repr_html_(self) -> str:
        if self._run is None:
            return _frame(self._definition_html())
        from .report import html as H

        ctx = self._context()
        s = ctx.summary
        snippet = (f"<details><summary>Winning configuration ({H.e(s['winner'])}), as PyTorch code</summary>"
                   f"<pre><code>{H.e(s['snippet'])}</code></pre></details>") if s.get("snippet") else ""
        return _frame(self._heading(ctx.metric_label) + H._answer(ctx) + H.stats_table(ctx, sortable=False) + snippet
                      + '<p class="muted">More: <code>.results</code>, <code>.summary</code>, <code>.diagnosis</code>, '
                        '<code>.plot.learning_curves()</code> and the other figures, <code>.report(out)</code>.</p>')

    def _summary_html(self) -> str:
        from .report import html as H

        ctx = self._context()
        return _frame(H._answer(ctx) + H.stats_table(ctx, sortable=False))

    def _heading(self, metric_label: str) -> str:
        spec, e = self.definition, _html.escape
        return (f'<p class="meta">reglab study</p><h3>{e(spec.name)}</h3>'
                f'<p class="question">{e(spec.question or "(no question given)")}</p>'
                f'<p class="meta">{e(spec.protocol)} protocol · {len(spec.seeds)} seeds · metric: test '
                f'{e(metric_label)} · baseline: {e(spec.baseline)} · {len(spec.variants)} variants</p>')

    def _definition_html(self) -> str:
        spec, e = self._spec, _html.escape
        names = [v.name for v in spec.variants]
        shown = ", ".join(e(n) for n in names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
        model = spec.model
        layers = ("<br>".join(f"<code>{e(line)}</code>" for line in model["layers"]) if "layers" in model
                  else f"factory <code>{e(model['factory'])}</code>")
        training = ", ".join(f"{k} = {v}" for k, v in spec.training.items()) or "defaults (Keras preset)"
        data = ", ".join(f"{k} = {v}" for k, v in spec.data.items())
        store = e(str(self.db)) if self.db is not None else "in memory (db= keeps the results in a file)"
        rows = [("data", e(data)), ("model", layers), ("training", e(training)),
                ("variants", shown + (" (then refined)" if spec.protocol == "grid" and spec.grid.get("refine", True)
                                      else "")),
                ("store", store)]
        return (f'<p class="meta">reglab study · not run yet: <code>.run()</code></p><h3>{e(spec.name)}</h3>'
                f'<p class="question">{e(spec.question or "(no question given)")}</p>'
                f'<p class="meta">{e(spec.protocol)} protocol · {len(spec.seeds)} seeds · baseline: '
                f'{e(spec.baseline)} · {len(spec.variants)} variants</p>'
                '<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")


class Summary(pd.DataFrame):
    """The statistics table (:attr:`Study.summary`): a DataFrame that shows in Jupyter as the
    report's answer and table with verdicts. Anything derived from it (a selection, a copy) is a
    plain DataFrame."""

    _metadata = ["_reglab_html"]

    @property
    def _constructor(self):
        return pd.DataFrame

    def _repr_html_(self):
        html = getattr(self, "_reglab_html", None)
        return html if html is not None else pd.DataFrame._repr_html_(self)


class Plots:
    """``study.plot``: each figure of the report as a matplotlib ``Figure`` (shown inline in Jupyter).
    A figure the study cannot have (a validation curve without a grid, decision boundaries of data
    that is not 2-D) raises :class:`StudyError` saying why."""

    def __init__(self, study: Study):
        self._study = study

    def learning_curves(self):
        """Train and validation metric and loss per epoch, mean over the seeds with a 95% band."""
        from .report import figures

        return self._draw(figures.learning_curves, "learning curves", "no learning curves were kept")

    def validation_curve(self):
        """Train and test metric against the strength of a grid, with the best and the 1-SE strength."""
        from .report import figures

        return self._draw(figures.validation_curve, "validation curve",
                          "it needs a grid of one strength with at least two scored strengths")

    def per_seed(self):
        """The test metric of every seed, and the paired differences to the baseline."""
        from .report import figures

        return self._draw(figures.strip_plot, "per-seed plot", "no variant has a score")

    def decision_boundaries(self):
        """The predicted probability over the input plane (2-D classification data); one member per
        variant shown is re-trained with the study's first seed, as in the report."""
        from .report import boundary

        return self._draw(boundary.decision_boundaries, "decision boundaries",
                          "they need classification data with two features")

    def weight_norms(self):
        """Kernel norms per layer (L2, largest per-unit, L1), mean over the seeds."""
        from .report import figures

        return self._draw(figures.weight_norms, "weight norms", "the model has no weighted layer with a kernel")

    def sparsity(self):
        """The fraction of zero activations and the mean activation per activation layer."""
        from .report import figures

        return self._draw(figures.sparsity, "sparsity plot", "the model has no activation layer")

    def heat_map(self):
        """Mean test metric over a grid of two strengths."""
        from .report import figures

        return self._draw(figures.heat_map, "heat map", "it needs a grid of two strengths")

    def _draw(self, make, what: str, needs: str):
        import matplotlib

        from .report import figures

        ctx = self._study._context()
        with matplotlib.rc_context(figures.STYLE):
            plot = make(ctx, None)
        if plot is None:
            raise StudyError(f"no {what} for study {self._study.name!r}: {needs}.")
        _inline_figures()
        return plot.figure

    def __repr__(self) -> str:
        names = ("learning_curves", "validation_curve", "per_seed", "decision_boundaries", "weight_norms",
                 "sparsity", "heat_map")
        return f"<figures of study {self._study.name!r}: {', '.join(n + '()' for n in names)}>"


# ------------------------------------------------------------------------------------ helpers


def _param_keys(spec: S.Study) -> list[str]:
    """The names of what a grid varies (``value``, or e.g. ``l1``, ``l2``): columns of the tables."""
    return list(dict.fromkeys(k for v in spec.variants for k in v.params))


def _columns(rows: list[dict], first: list[str]) -> list[str]:
    return list(dict.fromkeys([*first, *(k for r in rows for k in r)]))


def _definition(source, sections: dict):
    """The study table (not yet validated) and the folder its relative paths start from."""
    for key in sections:
        if key not in S.TOP_KEYS:
            close = difflib.get_close_matches(str(key), [*SECTIONS, "epochs", "db"], n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the study file's sections are: {', '.join(SECTIONS)}"
            raise StudyError(f"Study(): unknown keyword {key!r}; {hint}")
    if source is None:
        raw, base_dir = {}, Path.cwd()
    elif isinstance(source, (str, os.PathLike)):
        with _friendly():
            raw = S.read(source)
        base_dir = Path(source).expanduser().resolve().parent
    elif isinstance(source, S.Study):
        raw, base_dir = copy.deepcopy(source.raw), source.base_dir
    elif isinstance(source, Mapping):
        raw, base_dir = copy.deepcopy(dict(source)), Path.cwd()
    else:
        raise StudyError(f"Study(): give a study file (a path), a dict shaped like one, or keyword arguments; "
                         f"got {type(source).__name__}.")
    for key, value in sections.items():
        if key in TABLES and isinstance(value, Mapping) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **copy.deepcopy(dict(value))}
        else:
            raw[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else copy.deepcopy(value)
    return raw, base_dir


class _friendly:
    """Errors a user can fix (the study, its data, its model, the database) become one
    :class:`StudyError` raised here, without the library's frames behind it."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        from .data import DataError
        from .store import StoreError
        from .study.keras import ModelError

        if isinstance(exc, (StudyError, DataError, StoreError, ModelError)):
            raise StudyError(str(exc)) from None
        return False


def _in_jupyter() -> bool:
    """Whether this runs in a Jupyter kernel (where tqdm draws its notebook bar)."""
    import sys

    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:   # noqa: BLE001 - not IPython as we know it: no notebook
        return False


def _inline_figures() -> None:
    """In IPython, show a returned matplotlib Figure inline: the inline backend registers its
    formatter only once pyplot loads it, and reglab draws without pyplot. A format the user chose
    (``%config InlineBackend.figure_formats``) is left alone."""
    import sys

    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return
    from matplotlib.figure import Figure

    formatters = shell.display_formatter.formatters
    for mime in ("image/png", "image/svg+xml", "image/jpeg", "application/pdf"):
        try:
            formatters[mime].lookup_by_type(Figure)
            return
        except KeyError:
            continue
    from IPython.core.pylabtools import print_figure

    formatters["image/png"].for_type(Figure, lambda fig: print_figure(fig, "png", bbox_inches="tight"))


CSS = """
.reglab-study { font-size: 13px; line-height: 1.45; }
.reglab-study h3 { margin: .1rem 0 .2rem; }
.reglab-study .meta, .reglab-study .muted { color: #5f6368; margin: .2rem 0; }
.reglab-study .question { font-size: 1.05em; margin: .2rem 0; }
.reglab-study .answer { background: #f5f6f8; border-left: 4px solid #3a7ebf; padding: .5rem .8rem; margin: .6rem 0; }
.reglab-study .answer p { margin: .2rem 0; }
.reglab-study table { border-collapse: collapse; margin: .4rem 0; font-variant-numeric: tabular-nums; }
.reglab-study th, .reglab-study td { padding: .25rem .45rem; border-bottom: 1px solid #d9d9de; text-align: right;
  vertical-align: top; white-space: nowrap; }
.reglab-study th { background: #f5f6f8; font-weight: 600; }
.reglab-study td.text, .reglab-study th.text, .reglab-study table.kv th, .reglab-study table.kv td { text-align: left;
  white-space: normal; }
.reglab-study tr.baseline td { background: #fafafa; }
.reglab-study .better { color: #1b7a3a; font-weight: 600; }
.reglab-study .worse { color: #b3261e; font-weight: 600; }
.reglab-study .swatch { display: inline-block; width: .8em; height: .8em; border-radius: 2px; margin-right: .35em; }
.reglab-study pre { background: #f5f6f8; padding: .5rem .7rem; overflow: auto; }
"""


def _frame(body: str) -> str:
    return f'<div class="reglab-study"><style>{CSS}</style>{body}</div>'
