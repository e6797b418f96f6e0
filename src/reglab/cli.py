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
# The toolbox beyond the seeds (augmentation, dropout, mixup on images; DropPath and EMA on a residual
# MLP): at most TOOLBOX_DEMO_SEEDS seeds and their own epochs, so the demo stays within a few minutes
# (`reglab run examples/digits_toolbox.toml` runs all of a file's seeds).
TOOLBOX_STUDIES = ["digits_toolbox", "resmlp_toolbox"]
TOOLBOX_DEMO_SEEDS = 5


def _open_store(db, create=True):
    """The store at ``db``; commands that only read refuse a missing file instead of creating one."""
    from pathlib import Path

    from reglab.store import Store

    if not create and not Path(db).exists():
        raise UserError(f"no database at {db!r}; run a study first (`reglab run STUDY.toml --db {db}`) or pass --db.")
    return Store(db)


def _print_run(run_, published=None):
    from reglab.study import text

    click.echo("\n" + text.console(run_.summary, published))


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
@click.option("--until-clear", is_flag=True, default=False,
              help="While a comparison with the baseline is unclear, double the seeds of the baseline and the "
                   "unclear variants (up to --max-seeds) and compare again.")
@click.option("--max-seeds", type=click.IntRange(2, 100_000), default=100, show_default=True, metavar="N",
              help="With --until-clear: the most seeds to run.")
@click.option("--save-models", "save_models", type=click.Path(), default=None, metavar="DIR",
              help="Write every member this run trains (not only the winner's) into DIR, created if missing: "
                   "DIR/VARIANT/split<k>-seed<s>.safetensors (its weights), DIR/VARIANT/build.py (def build(): "
                   "its model) and DIR/index.json (each member's stored test score). Members an earlier run "
                   "finished are not trained again, so not written. Local executor only.")
@click.option("--device", default=None, metavar="DEVICE",
              help="Train on DEVICE: auto (a GPU when there is one), cpu, cuda, cuda:1, mps. Overrides the study's "
                   "[training] device (default auto).")
@THREADS_OPTION
@_friendly
def run(study_file, db, seeds, epochs, executor, scheduler, workers, task_size, until_clear, max_seeds, save_models,
        device, threads):
    """Run (or resume) a study file and print its statistics.

    Finished (configuration, seed) pairs in the database are never trained again.
    Example: reglab run examples/moons_l2.toml --seeds 10 --db moons.db
    Seeds until the verdicts settle: reglab run STUDY.toml --seeds 5 --until-clear --max-seeds 40
    On a Dask cluster: reglab run STUDY.toml --executor dask --scheduler tcp://HOST:8786
    Keep the trained models: reglab run STUDY.toml --save-models models/
    """
    from reglab import study as st

    _use_threads(threads)
    if executor == "local" and (scheduler is not None or workers is not None):
        raise UserError("--scheduler and --workers need --executor dask")
    if save_models is not None and executor == "dask":
        raise UserError("--save-models needs --executor local: Dask workers may run on other machines, "
                        "which cannot write DIR; drop one of the two")
    study = st.load(study_file, seeds=seeds, epochs=epochs)
    if device is not None:
        from reglab.sources import resolve_device

        try:
            resolve_device(device, owner="--device")
        except ValueError as exc:
            raise UserError(str(exc)) from None
        study.set_device(device)
    dataset = st.prepare(study)   # a study that cannot run is rejected before the database is touched
    if save_models is not None:
        from reglab.study.saved import check_folder

        try:
            save_models = check_folder(save_models, study)
        except ValueError as exc:
            raise UserError(f"--save-models: {exc}") from None
    if executor == "dask":
        from reglab.study.dask import DaskExecutor

        pool = DaskExecutor(scheduler, workers)
    else:
        pool = contextlib.nullcontext()
    with _stop_on_interrupt(db, study.name), pool as ex, _open_store(db) as store:
        start = time.perf_counter()
        run_ = st.run(study, store, dataset=dataset, echo=click.echo, executor=ex, task_size=task_size,
                      keep_histories=False, until_clear=max_seeds if until_clear else None,
                      save_models=save_models)
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

    Every variant in the database is listed, with the strengths a grid's refinement added. While the
    study runs: the population in training (members, epoch), the run's member-epochs and its ETA.
    Example: reglab status moons-l2
    """
    from reglab.store import holder

    with _open_store(db, create=False) as store:
        row = store.study(study_name)
        if row is None:
            raise UserError(f"no study {study_name!r} in {db}; `reglab list --db {db}` shows what is there.")
        last = store.last_run(row["id"])
        live = last if last is not None and last["alive"] else None
        progress = store.progress(row["id"])
        planned = (live or {}).get("planned") or {}
        run_seeds = planned.get("seeds")
        in_run = store.progress(row["id"], seeds=run_seeds) if live and run_seeds else progress
    seeds = set(progress["seeds"])   # the seed count is not part of a stored study: runs may add seeds
    if run_seeds:
        seeds |= set(run_seeds)
    rows, declared, refining = _status_rows(row["spec"], progress["configs"])
    splits = _splits(row["spec"])   # a study over K train/test splits runs every seed on each
    expected = len(rows) * len(seeds) * splits
    finished = sum(progress["seeds"].values())
    over = f"{splits} splits × {len(seeds)} seed(s)" if splits > 1 else f"{len(seeds)} seed(s)"
    if live:
        members = planned.get("members", expected)
        done = _finished_in_run(in_run["configs"], declared, members, len(run_seeds or seeds) * splits)
        click.echo(f"{study_name}: running{holder(live)}: {done} of {members} members finished")
        for line in _training_lines(live):
            click.echo(f"  {line}")
    else:
        click.echo(f"{study_name}: {finished} of {expected} results over the {over} run so far"
                   + (" (grid refinement may add more)" if refining else ""))
        if last is not None:   # its row outlived it: killed, crashed or the machine went down
            seen = _age(last["updated"] or last["started"])
            training = last["training"] if isinstance(last["training"], dict) else {}
            populations = _populations(training.get("populations"))
            click.echo(f"  the last run{holder(last)} stopped without finishing"
                       + (f", last heard from {seen} ago" if seen else "")
                       + (f" while training {populations}" if populations else "")
                       + "; run the study again to resume")
    for name, note, count, diverged in rows:
        label = f"{name} ({note})" if note else name
        click.echo(f"  {label:<24} {count:>4}/{len(seeds) * splits}" + (f"  ({diverged} diverged)" if diverged else ""))


# A running study writes its progress every few seconds (reglab.study.progress.STATUS_SECONDS):
# progress older than this means the run is stopped (SIGSTOP, a suspended laptop) or stuck.
STALE_SECONDS = 60


def _training_lines(live) -> list[str]:
    """What a running study is training now, from the progress it writes into the store:
    ``training: 10 members, epoch 140/400, updated 5 s ago`` and, for the whole run,
    ``this run: 12/25 members finished, 3,400/12,500 member-epochs, ETA 4 min``."""
    training = live.get("training")
    if not isinstance(training, dict):
        return []
    age = _seconds_since(live.get("updated"))
    updated = f"updated {_duration(age)} ago" if age is not None else "updated at an unknown time"
    if age is not None and age > STALE_SECONDS:
        updated += " (stale: the run has stopped reporting; it may be suspended or stuck)"
    planned = (training.get("members") or [0, 0])[-1]
    idle = "between populations" if planned else "starting"
    lines = [f"training: {_populations(training.get('populations')) or idle}, {updated}"]
    try:
        (finished, members), (done, total) = training["members"], training["member_epochs"]
        eta = training.get("eta_s")
        lines.append(f"this run: {finished}/{members} members finished, {done:,}/{total:,} member-epochs"
                     + (f", ETA {_duration(max(0.0, eta - (age or 0.0)))}" if eta is not None else ""))
    except (KeyError, TypeError, ValueError):   # written by another reglab version: show what can be read
        pass
    return lines


def _populations(populations) -> str:
    """``10 members, epoch 140/400`` per population training (several: joined by ``; ``)."""
    try:
        return "; ".join(f"{p['members']} members" + (f", epoch {p['epoch']}/{p['epochs']}" if p.get("epochs") else "")
                         for p in populations or [])
    except (KeyError, TypeError, AttributeError):
        return ""


def _seconds_since(iso) -> float | None:
    from datetime import datetime, timezone

    try:
        return max(0.0, (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds())
    except (TypeError, ValueError):
        return None


def _age(iso) -> str:
    seconds = _seconds_since(iso)
    return _duration(seconds) if seconds is not None else ""


def _duration(seconds: float) -> str:
    from reglab._timefmt import duration   # no imports: status loads no training code

    return duration(seconds)


def _splits(stored_spec) -> int:
    """The train/test splits of a stored study (``splits``; 1 when absent or not a count)."""
    splits = stored_spec.get("splits", 1) if isinstance(stored_spec, dict) else 1
    return splits if isinstance(splits, int) and not isinstance(splits, bool) and splits >= 1 else 1


def _status_rows(stored_spec, configs):
    """The lines of `reglab status`: (name, note, finished, diverged) for every variant the study
    file declares and every other configuration saved in the store (a grid's refined strengths),
    in the order the report shows them; the declared names; and whether a grid's refinement may
    still add strengths.

    The declared variants are read from the stored spec as it is (`_declared`), not rebuilt: no
    data is loaded, no model is built, reglab.study (and with it scipy) is not even imported, so
    status stays fast; the rest comes from what the store holds, so the total counts what ran."""
    protocol = stored_spec.get("protocol", "compare") if isinstance(stored_spec, dict) else None
    declared = _declared(stored_spec)
    names = {name for name, _ in declared}
    found: dict[str, list] = {}
    for c in configs:
        found.setdefault(c["variant"], []).append(c)
    extra = [c for c in configs if c["variant"] not in names]
    note = "refined" if protocol == "grid" else "not in the study file"

    def counts(name):
        return (sum(c["finished"] for c in found.get(name, [])), sum(c["diverged"] for c in found.get(name, [])))

    rows = [(name, "", *counts(name), params) for name, params in declared]
    rows += [(c["variant"], note, c["finished"], c["diverged"], c["params"]) for c in extra]
    if protocol == "grid" and extra:   # as the run and the report order a refined grid: by strength, 'none' first
        rows.sort(key=lambda r: r[4].get("value", -1.0) if isinstance(r[4], dict) else -1.0)
    grid = stored_spec.get("grid") if protocol == "grid" else None
    refining = (isinstance(grid, dict) and not extra and grid.get("refine", True) is not False
                and not isinstance(grid.get("values"), dict))
    return [r[:4] for r in rows], names, refining




def _declared(stored_spec) -> list[tuple[str, dict]]:
    """(name, params) of the variants a stored study spec declares, named as reglab.study.spec names
    them: a grid's 'none' (unless include_none = false) and one per point (``f"{value:g}"``, or
    ``"a=0.1, b=0.01"`` for a grid of several strengths); otherwise the variant tables, or 'none'.
    A spec this code cannot read gives [] (status then shows what the store holds)."""
    try:
        if stored_spec.get("protocol", "compare") != "grid":
            tables = stored_spec.get("variants") or {"none": {}}
            return [(t["name"], {}) if isinstance(tables, list) else (t, {}) for t in tables]
        from reglab._grid import DEFAULT_DECADES, point_name, product

        grid = stored_spec.get("grid") or {}
        values = grid.get("values", DEFAULT_DECADES)
        out = [("none", {})] if grid.get("include_none", True) else []
        values = values if isinstance(values, dict) else {"value": values}
        points = product({key: [float(v) for v in vals] for key, vals in values.items()})
        return out + [(point_name(point), point) for point in points]
    except (AttributeError, KeyError, TypeError, ValueError, StopIteration):
        return []


def _finished_in_run(configs, declared, members, n_seeds):
    """The members a running run has finished, out of the ``members`` it plans over ``n_seeds``
    seeds (``configs``: the store's counts over those seeds). Its plan counts the declared variants
    until a grid is refined, then the refined strengths too; pairs it does not plan (strengths an
    earlier run refined) are not counted."""
    done = sum(c["finished"] for c in configs if c["variant"] in declared)
    refined = members - len(declared) * n_seeds   # > 0 once this run has planned its refinement
    if refined > 0:
        done += min(refined, sum(c["finished"] for c in configs if c["variant"] not in declared))
    return done


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
    """Run all the seeds' case studies: L2 and unit norm on moons, the L2 grid, activity L1 on circles;
    then the toolbox on a digits CNN (augmentation, dropout, mixup) and a residual MLP (DropPath, EMA).

    Each is trained for real over every seed as vectorised populations; the statistics (mean ± std,
    95% CI, paired difference to no regularization with Holm-corrected verdicts) are printed with the
    seeds' published single-run figures alongside. Example: reglab demo --seeds 10 --epochs 1000
    """
    from importlib import resources

    from reglab import study as st

    _use_threads(threads)
    start = time.perf_counter()
    with _stop_on_interrupt(db, None), _open_store(db) as store:
        for name in DEMO_STUDIES + TOOLBOX_STUDIES:
            path = resources.files("reglab") / "examples" / f"{name}.toml"
            with resources.as_file(path) as file:
                study = st.load(file, seeds=seeds, epochs=epochs)
                if name in TOOLBOX_STUDIES:
                    own = st.load(file)
                    study = st.load(file, seeds=min(seeds, TOOLBOX_DEMO_SEEDS, len(own.seeds)),
                                    epochs=min(epochs, own.training.get("epochs", epochs)))
            run_ = st.run(study, store, keep_histories=False)
            _print_run(run_, PUBLISHED.get(study.name))
            if out:
                from reglab.report import write_report

                write_report(study.name, db, f"{out}/{study.name}")
    click.echo(f"\ndemo finished in {time.perf_counter() - start:.0f} s; results in {db}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
