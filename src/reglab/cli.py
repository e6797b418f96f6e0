"""The ``reglab`` command: a thin layer over the Python API."""

from __future__ import annotations

import contextlib
import json
import sys
import time

import click


class UserError(click.ClickException):
    """A mistake the user can fix: one line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


def _friendly(fn):
    """Turn ValueError/TypeError from the API into one clear line and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:   # e.g. `reglab export ... | head`: the reader left, nothing to say
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except (ValueError, TypeError, FileNotFoundError, OSError) as exc:
            raise UserError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None

    return wrapper


class _Main(click.Group):
    """Usage errors (a missing argument, a bad option value) print one line too."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            sub = f" {ctx.invoked_subcommand}" if ctx.invoked_subcommand else ""
            raise UserError(f"{exc.format_message()} (see `reglab{sub} --help`)") from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="reglab")
def main():
    """reglab: cure overfitting in PyTorch models with Keras-grade regularization.

    Example: reglab demo --seeds 10
    """


THREADS_OPTION = click.option(
    "--threads", type=click.IntRange(1, 4096), default=None, metavar="N",
    help="Train on N threads (default: REGLAB_THREADS, else every usable CPU, dropping to one thread while "
         "other processes keep the CPU busy).")


def _use_threads(threads):
    """--threads overrides REGLAB_THREADS for this process; a bad REGLAB_THREADS is one line."""
    import os

    from reglab import threads as T

    if threads is not None:
        os.environ[T.ENV] = str(threads)
    T.requested()   # raises ValueError (one line via _friendly) when REGLAB_THREADS is not a count


DB_OPTION = click.option("--db", "db", default="reglab.db", show_default=True, type=click.Path(dir_okay=False),
                         help="SQLite file that keeps every result (created if missing).")

# The seeds' published single-run figures (train, test) shown beside the demo's statistics.
PUBLISHED = {
    "moons-l2": {"none": (1.000, 0.914), "l2": (1.000, 0.943)},
    "moons-l2-grid": {"none": (1.000, 0.914), "0.1": (0.967, 0.829), "0.01": (1.000, 0.943), "0.001": (1.000, 0.943),
                      "0.0001": (1.000, 0.929), "1e-05": (1.000, 0.929), "1e-06": (1.000, 0.914)},
    "moons-unit-norm": {"none": (1.000, 0.914), "unit_norm": (1.000, 0.943)},
    "circles-activity": {"none": (1.000, 0.786), "before_relu_sum": (0.967, 0.829), "after_relu_sum": (1.000, 0.743)},
    "circles-activity-grid": {"none": (1.000, 0.786)},
}
DEMO_STUDIES = ["moons_l2", "moons_l2_grid", "moons_unit_norm", "circles_activity", "circles_activity_grid"]


def _open_store(db, create=True):
    """The store at ``db``; commands that only read refuse a missing file instead of creating one."""
    from pathlib import Path

    from reglab.store import Store

    if not create and not Path(db).exists():
        raise UserError(f"no database at {db!r}; run a study first (`reglab run STUDY.toml --db {db}`) or pass --db.")
    return Store(db)


def _print_run(run_, published=None):
    from reglab.study import text

    s = run_.summary
    click.echo(f"\n== {s['study']} ({s['protocol']}, {s['seeds']} seeds, metric: {s['metric']}) ==")
    if s.get("question"):
        click.echo(s["question"])
    click.echo(text.table(s, published))
    click.echo(text.diagnosis(s))
    if s.get("snippet"):
        click.echo("\nwinning configuration, as PyTorch code:\n" + s["snippet"])


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@DB_OPTION
@click.option("--seeds", type=click.IntRange(1, 100_000), default=None, help="Override the study's seed count.")
@click.option("--epochs", type=click.IntRange(1, 1_000_000), default=None, help="Override the training epochs.")
@click.option("--executor", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="Train in this process, or on a Dask cluster (pip install 'reglab[dask]').")
@click.option("--scheduler", default=None, metavar="tcp://HOST:8786", help="With --executor dask: an existing cluster.")
@click.option("--workers", type=click.IntRange(1, 1024), default=None,
              help="With --executor dask: start a local cluster of N worker processes (default 2).")
@click.option("--task-size", type=click.IntRange(1, 10_000_000), default=None, metavar="N",
              help="At most N members per population: results are saved after each population, so smaller "
                   "tasks lose less to an interruption (default: one population per training setting).")
@THREADS_OPTION
@_friendly
def run(study_file, db, seeds, epochs, executor, scheduler, workers, task_size, threads):
    """Run (or resume) a study file and print its statistics.

    Finished (configuration, seed) pairs in the database are never trained again.
    Example: reglab run examples/moons_l2.toml --seeds 10 --db moons.db
    On a Dask cluster: reglab run STUDY.toml --executor dask --scheduler tcp://HOST:8786
    """
    from reglab import study as st

    _use_threads(threads)
    if executor == "local" and (scheduler is not None or workers is not None):
        raise UserError("--scheduler and --workers need --executor dask")
    study = st.load(study_file, seeds=seeds, epochs=epochs)
    dataset = st.prepare(study)   # a study that cannot run is rejected before the database is touched
    if executor == "dask":
        from reglab.study.dask import DaskExecutor

        pool = DaskExecutor(scheduler, workers)
    else:
        pool = contextlib.nullcontext()
    with _stop_on_interrupt(db, study.name), pool as ex, _open_store(db) as store:
        start = time.perf_counter()
        run_ = st.run(study, store, dataset=dataset, echo=click.echo, executor=ex, task_size=task_size,
                      keep_histories=False)
        click.echo(f"{run_.trained} members trained, {len(run_.records) - run_.trained} from {db}, "
                   f"{time.perf_counter() - start:.1f} s")
    _print_run(run_, PUBLISHED.get(study.name))


@contextlib.contextmanager
def _stop_on_interrupt(db, name):
    """Ctrl-C (SIGINT) or SIGTERM: finished tasks are already saved (each in its own transaction;
    the one being saved is saved whole), so say how far the study got and exit 130."""
    import signal

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not interrupt the goodbye
        saved = "no results"
        try:
            from reglab.store import Store

            with Store(db) as store:
                rows = [s for s in store.studies() if name is None or s["name"] == name]
                saved = f"{sum(s['n_results'] for s in rows)} results" if rows else saved
        except Exception:   # the goodbye must not fail
            pass
        of = f" of study {name!r}" if name else ""
        click.echo(f"\ninterrupted: {saved}{of} are saved in {db}; run the same command again to resume", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)


@main.command(name="list")
@DB_OPTION
@_friendly
def list_(db):
    """List the studies in the database with their number of results.

    Example: reglab list --db moons.db
    """
    with _open_store(db, create=False) as store:
        rows = store.studies()
    if not rows:
        click.echo(f"no studies in {db}")
    for row in rows:
        click.echo(f"{row['name']:<30} {row['n_results']:>6} results   created {row['created']}")


@main.command()
@click.argument("study_name")
@DB_OPTION
@_friendly
def status(study_name, db):
    """How far a study has run: finished (configuration, seed) pairs per variant, over the seeds run so far.

    Example: reglab status moons-l2
    """
    from reglab.study import spec

    with _open_store(db, create=False) as store:
        row = store.study(study_name)
        if row is None:
            raise UserError(f"no study {study_name!r} in {db}; `reglab list --db {db}` shows what is there.")
        records = store.results(row["id"])
        live = store.running(row["id"])
    study = spec.from_dict(row["spec"])
    seeds = {r["seed"] for r in records}   # the seed count is not part of a stored study: runs may add seeds
    if live and live["planned"].get("seeds"):
        seeds |= set(live["planned"]["seeds"])
    expected = len(study.variants) * len(seeds)
    per_variant, diverged = {}, {}
    for r in records:
        per_variant[r["variant"]] = per_variant.get(r["variant"], 0) + 1
        diverged[r["variant"]] = diverged.get(r["variant"], 0) + bool(r["diverged"])
    if live:
        from reglab.store import holder

        who = holder(live)
        planned = live["planned"].get("members", expected)
        click.echo(f"{study_name}: running{who}: {len(records)} of {planned} members finished")
    else:
        click.echo(f"{study_name}: {len(records)} of {expected} results over the {len(seeds)} seed(s) run so far"
                   + (" (grid refinement adds more)" if study.protocol == "grid" else ""))
    for v in study.variants:
        click.echo(f"  {v.name:<24} {per_variant.get(v.name, 0):>4}/{len(seeds)}"
                   + (f"  ({diverged[v.name]} diverged)" if diverged.get(v.name) else ""))


@main.command()
@click.argument("study_name")
@DB_OPTION
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write here instead of standard output.")
@_friendly
def export(study_name, db, fmt, out):
    """Export one record per variant × seed (variant, params, seed, metrics, epochs_run, diverged).

    Example: reglab export moons-l2 --format csv --out moons.csv
    """
    from reglab.report import files

    with _open_store(db, create=False) as store:
        row = store.study(study_name)
        if row is None:
            raise UserError(f"no study {study_name!r} in {db}; `reglab list --db {db}` shows what is there.")
        records = store.results(row["id"])
    # The same rows as the report's results.csv/results.json (NaN becomes an empty cell / null).
    payload = json.dumps(files.rows(records), indent=1, allow_nan=False) if fmt == "json" else files.results_csv(records)
    _write(out, payload)


def _write(out, payload):
    if out is None:
        click.echo(payload, nl=False)
        return
    from pathlib import Path

    path = Path(out)
    if not path.parent.exists():
        raise UserError(f"the folder of {out!r} does not exist; create it or choose another --out.")
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(payload, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"cannot write {out!r}: {exc.strerror}; choose another --out.") from None


@main.command()
@click.argument("study_name")
@DB_OPTION
@click.option("--out", type=click.Path(file_okay=False), default="report", show_default=True)
@_friendly
def report(study_name, db, out):
    """Write a study's report into a folder: index.html (one self-contained page with the statistics,
    diagnosis and figures), figures/ as PNG and SVG, summary.md, results.csv, results.json.

    Example: reglab report moons-l2 --out report/
    """
    from pathlib import Path

    from reglab.report import write_report

    if not Path(db).exists():
        raise UserError(f"no database at {db!r}; run a study first (`reglab run STUDY.toml --db {db}`) or pass --db.")
    paths = write_report(study_name, db, out)
    click.echo(f"wrote {paths[0]} and {len(paths) - 1} more files (figures/, summary.md, results.csv, results.json)")
    with _open_store(db, create=False) as store:
        entry = store.study(study_name)
        live = store.running(entry["id"]) if entry else None
    if live:
        click.echo(f"note: {study_name!r} is still running; the report shows the {entry['n_results']} members "
                   f"finished so far -- write it again when the run ends")


@main.command()
@click.option("--seeds", default=30, show_default=True, type=click.IntRange(2, 1000),
              help="Seeds per variant (a paired design: every variant runs on the same seeds).")
@click.option("--epochs", default=4000, show_default=True, type=click.IntRange(1, 100_000),
              help="Training epochs, as in the seeds' tutorials.")
@DB_OPTION
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Also write each study's report here.")
@THREADS_OPTION
@_friendly
def demo(seeds, epochs, db, out, threads):
    """Run all the seeds' case studies: L2 and unit norm on moons, the L2 grid, activity L1 on circles.

    Each is trained for real over every seed as vectorised populations; the statistics (mean ± std,
    95% CI, paired difference to no regularization with Holm-corrected verdicts) are printed with the
    seeds' published single-run figures alongside. Example: reglab demo --seeds 10 --epochs 1000
    """
    from importlib import resources

    from reglab import study as st

    _use_threads(threads)
    start = time.perf_counter()
    with _stop_on_interrupt(db, None), _open_store(db) as store:
        for name in DEMO_STUDIES:
            path = resources.files("reglab") / "examples" / f"{name}.toml"
            with resources.as_file(path) as file:
                study = st.load(file, seeds=seeds, epochs=epochs)
            run_ = st.run(study, store, keep_histories=False)
            _print_run(run_, PUBLISHED.get(study.name))
            if out:
                from reglab.report import write_report

                write_report(study.name, db, f"{out}/{study.name}")
    click.echo(f"\ndemo finished in {time.perf_counter() - start:.0f} s; results in {db}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
