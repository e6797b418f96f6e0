"""Load: a study of 2,000 tasks through the real CLI, on the local executor and on a 2-worker Dask
cluster, with the memory of the driver and of its whole process tree sampled while it runs.

    python benchmarks/load.py [--tasks 2000] [--output-dir benchmarks] [--quick]

The study is the seeds' moons MLP (2-500-1, L2 on the hidden kernel) as a grid of many L2 strengths
(``none`` + tasks/10 - 1 values, refine = false) × 10 seeds, trained for a few epochs so that each
task is short: the point is the cost per task and the memory, not the training. Every run is
``reglab run STUDY --db DB --task-size 1`` in a fresh subprocess and a fresh database, so there
are exactly as many tasks (populations of one member, each saved in its own transaction) as
(variant, seed) pairs; ``--executor dask --workers 2`` starts a local cluster of 2 worker
processes (one thread each) from the driver. Torch and numba get one thread (``--threads 1``, the
default, through OMP_NUM_THREADS and NUMBA_NUM_THREADS): with their default two threads on a busy
2-core machine the local run spends most of its time in their threads waiting for each other
(200 tasks: 164 s at load average 7.5, against ~20 s with one thread), which measures the
machine's load rather than the cost of a task.

While a run goes, every ~0.2 s: the RSS of the driver process, the summed RSS of the whole tree
(driver + Dask nannies and workers + multiprocessing helpers; shared pages count once per
process, so the sum overstates what the tree really holds) and the database's row count (a
read-only connection; the store is WAL, so reading never blocks the writer). Recorded per run:

- wall          the whole command, start to exit (imports, cluster start, summary, cluster close);
- startup       start to the first saved row; training = first to last saved row; finish = last
                row to exit (statistics over every record, the printed table, closing the cluster);
- tasks/s       tasks / wall, and (tasks - 1) / training (the steady rate);
- peak RSS      of the driver and of the tree, sampled; ``driver_maxrss`` is the kernel's exact
                peak (``wait4``: max over the driver and the children it reaped);
- RSS at 10%, 20%, ..., 100% of the rows saved (driver and tree);
- the store after the run: rows = tasks, no duplicate (config_key, seed), exactly the study's
                (variant, seed) pairs, ``PRAGMA integrity_check`` = ok.

"Bounded memory" is the comparison of a run with tasks/10 tasks (same epochs and seeds, a tenth of
the variants) with the full run: the growth of the peaks over 9/10 of the tasks. Comparison runs
without ``--task-size`` (one population of every member locally; one per worker on Dask) show
what the per-task overhead costs.

An unrecorded 20-task local run goes first (--no-warmup skips it), so that the first recorded run
does not pay alone for a cold file cache. Writes ``OUTPUT_DIR/load.json`` (machine, versions, load
average before and after each run, every number) and ``OUTPUT_DIR/load.md`` (the table; --render
writes it again from load.json). The machine is rarely quiet: read the timings with the load
average beside them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = 10
EPOCHS = 20
INTERVAL = 0.2
FRACTIONS = [i / 10 for i in range(1, 11)]


# ------------------------------------------------------------------------------------------ study


def grid_values(tasks: int, seeds: int = SEEDS) -> list[float]:
    """The L2 strengths of a study with ``tasks`` (variant, seed) pairs: ``none`` plus these."""
    if tasks % seeds or tasks // seeds < 2:
        raise ValueError(f"tasks must be a multiple of {seeds} and at least {2 * seeds}. Got {tasks}.")
    return [round((i + 1) * 1e-5, 10) for i in range(tasks // seeds - 1)]


def variant_names(tasks: int, seeds: int = SEEDS) -> list[str]:
    return ["none"] + [f"{v:g}" for v in grid_values(tasks, seeds)]


def study_text(tasks: int, seeds: int = SEEDS, epochs: int = EPOCHS) -> str:
    values = ", ".join(f"{v:g}" for v in grid_values(tasks, seeds))
    return f"""# Written by benchmarks/load.py: {tasks} (variant, seed) pairs, short training.
name = "load-{tasks}"
question = "Load test: does a study of many short tasks run with bounded memory?"
protocol = "grid"
seeds = {seeds}

[data]
name = "moons"

[model]
layers = [
  "Dense(500, input_dim=2, activation='relu')",
  "Dense(1, activation='sigmoid')",
]

[training]
epochs = {epochs}

[grid]
variant = {{ layers = {{ 0 = {{ kernel_regularizer = "l2({{value}})" }} }} }}
values = [{values}]
refine = false
"""


# ------------------------------------------------------------------------------------------ store


def count_rows(db: Path) -> int | None:
    """Rows in the results table, read-only; None while the file or table is not there yet."""
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            return conn.execute("SELECT count(*) FROM results").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def verify(db: Path, tasks: int, seeds: int = SEEDS) -> dict:
    """The store after a run: one row per (variant, seed) of the study, nothing else, file intact."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT count(*) FROM results").fetchone()[0]
        duplicates = conn.execute("SELECT count(*) FROM (SELECT config_key, seed FROM results "
                                  "GROUP BY study_id, config_key, seed HAVING count(*) > 1)").fetchone()[0]
        pairs = set(conn.execute("SELECT variant, seed FROM results").fetchall())
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    expected = {(name, seed) for name in variant_names(tasks, seeds) for seed in range(seeds)}
    return {"rows": rows, "expected_rows": tasks, "duplicates": duplicates, "pairs_match": pairs == expected,
            "missing_pairs": len(expected - pairs), "unexpected_pairs": len(pairs - expected),
            "integrity_check": integrity, "db_bytes": db.stat().st_size,
            "ok": rows == tasks and duplicates == 0 and pairs == expected and integrity == "ok"}


# ----------------------------------------------------------------------------------------- sample


def _reglab_command() -> list[str]:
    script = Path(sys.executable).with_name("reglab")
    return [str(script)] if script.exists() else [sys.executable, "-m", "reglab.cli"]


def _tree_rss(proc, seen: dict) -> tuple[int, int, int]:
    """(driver RSS, summed RSS of the driver and all its descendants, number of descendants);
    ``seen`` collects a short description of every descendant by pid."""
    import psutil

    driver = proc.memory_info().rss
    total, n = driver, 0
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
            n += 1
            if child.pid not in seen:
                seen[child.pid] = _describe(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return driver, total, n


def _describe(child) -> str:
    """'python -c from multiprocessing.spawn ...' and the like, short."""
    try:
        words = [Path(w).name if "/" in w else w for w in child.cmdline()[:4]]
    except Exception:   # the process went away
        return child.name()
    return " ".join(words)[:80]


def thread_env(threads: int | None) -> dict | None:
    """The environment for a run whose torch and numba use ``threads`` threads (None: their defaults)."""
    if not threads:
        return None
    n = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "NUMBA_NUM_THREADS": n}


def measure(argv: list[str], db: Path, tasks: int, log: Path, interval: float = INTERVAL, env=None) -> dict:
    """Run ``argv``, sampling its memory and the store's row count until it exits."""
    import psutil

    load_before = os.getloadavg()
    with open(log, "wb") as out:
        start = time.perf_counter()
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        proc = psutil.Process(popen.pid)
        samples, marks, seen = [], {}, {}
        peak = {"driver": 0, "tree": 0, "processes": 0}
        first_row = last_row = None
        status = usage = None
        while True:
            try:
                pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
            except ChildProcessError:   # pragma: no cover - reaped elsewhere
                pid = popen.pid
            if pid:
                break
            now = time.perf_counter() - start
            try:
                driver, tree, n = _tree_rss(proc, seen)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                time.sleep(interval / 4)
                continue
            rows = count_rows(db) or 0
            peak["driver"], peak["tree"] = max(peak["driver"], driver), max(peak["tree"], tree)
            peak["processes"] = max(peak["processes"], n + 1)
            if rows and first_row is None:
                first_row = now
            if rows >= tasks and last_row is None:
                last_row = now
            for f in FRACTIONS:
                if f not in marks and rows >= f * tasks:
                    marks[f] = {"t_s": round(now, 2), "rows": rows, "rss_driver": driver, "rss_tree": tree}
            samples.append((round(now, 2), rows, driver, tree))
            time.sleep(interval)
        wall = time.perf_counter() - start
    popen.returncode = os.waitstatus_to_exitcode(status) if status is not None else None
    rows = count_rows(db) or 0
    if last_row is None and rows >= tasks:   # the last rows landed between two samples and the exit
        last_row = wall
    if first_row is None and rows:
        first_row = wall
    training = (last_row - first_row) if first_row is not None and last_row is not None else None
    return {
        "argv": [Path(argv[0]).name] + argv[1:], "returncode": popen.returncode, "wall_s": wall,
        "startup_s": first_row, "training_s": training,
        "finish_s": (wall - last_row) if last_row is not None else None,
        "tasks_per_s": tasks / wall,
        "steady_tasks_per_s": (tasks - 1) / training if training else None,
        "peak_rss_driver": peak["driver"], "peak_rss_tree": peak["tree"], "processes": peak["processes"],
        "driver_maxrss": usage.ru_maxrss * 1024 if usage is not None else None,   # Linux: KiB
        "at_fraction": {f"{int(round(f * 100))}%": marks.get(f) for f in FRACTIONS},
        "samples": len(samples), "series": _thin(samples, 60),
        "descendants": sorted(seen.values()),
        "load_before": load_before, "load_after": os.getloadavg(),
    }


def _thin(samples, n):
    """At most ``n`` evenly spaced samples (t, rows, rss_driver, rss_tree), the last one included."""
    if len(samples) <= n:
        return samples
    step = (len(samples) - 1) / (n - 1)
    return [samples[round(i * step)] for i in range(n)]


# ------------------------------------------------------------------------------------------- runs


def run_case(workdir: Path, tasks: int, executor: str = "local", *, task_size: int | None = 1,
             workers: int = 2, seeds: int = SEEDS, epochs: int = EPOCHS, label: str | None = None,
             threads: int | None = 1) -> dict:
    """One ``reglab run`` of a fresh ``tasks``-pair study in a fresh database, measured and verified."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tag = label or f"{executor}-{tasks}-{'all' if task_size is None else task_size}"
    study = workdir / f"load_{tasks}_{epochs}.toml"
    study.write_text(study_text(tasks, seeds, epochs), encoding="utf-8")
    db = workdir / f"{tag}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    argv = _reglab_command() + ["run", str(study), "--db", str(db)]
    if task_size is not None:
        argv += ["--task-size", str(task_size)]
    if executor == "dask":
        argv += ["--executor", "dask", "--workers", str(workers)]
    log = workdir / f"{tag}.log"
    result = measure(argv, db, tasks, log, env=thread_env(threads))
    result.update(label=tag, executor=executor, tasks_planned=_planned(log), members=tasks, variants=tasks // seeds,
                  threads=threads or "default", seeds=seeds, epochs=epochs, task_size=task_size,
                  workers=workers if executor == "dask" else None)
    result["store"] = verify(db, tasks, seeds) if db.exists() else {"ok": False, "rows": 0}
    text = log.read_text(encoding="utf-8", errors="replace")
    result["log_head"] = text.splitlines()[:2]
    if result["returncode"] != 0:
        result["log_tail"] = text[-2000:]
    return result


def _planned(log: Path):
    """The number of populations the CLI said it would train ("training N members in M population(s)")."""
    import re

    text = log.read_text(encoding="utf-8", errors="replace")
    m = re.search(r"training (\d+) members in (\d+) population", text)
    if m:
        return int(m.group(2))
    return 1 if re.search(r"training \d+ variant\(s\)", text) else None


def machine() -> dict:
    import psutil
    import torch

    try:
        import distributed
        dask_version = distributed.__version__
    except ImportError:   # pragma: no cover
        dask_version = None
    import reglab

    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "distributed": dask_version, "psutil": psutil.__version__,
            "reglab": getattr(reglab, "__version__", None), "load_average": os.getloadavg()}


def plan_runs(tasks: int, compare: bool = True) -> list[dict]:
    small = tasks // 10
    runs = []
    for executor in ("local", "dask"):
        runs += [dict(executor=executor, tasks=small, task_size=1), dict(executor=executor, tasks=tasks, task_size=1)]
        if compare:
            runs.append(dict(executor=executor, tasks=tasks, task_size=None))
    return runs


# ------------------------------------------------------------------------------------------ report


def _mib(n):
    return f"{n / 2 ** 20:,.0f}" if n else "–"


def growth(runs: list[dict]) -> dict:
    """Peak RSS growth from the small to the full --task-size 1 run, per executor."""
    out = {}
    for executor in ("local", "dask"):
        one = sorted((r for r in runs if r["executor"] == executor and r["task_size"] == 1), key=lambda r: r["members"])
        if len(one) >= 2:
            a, b = one[0], one[-1]
            out[executor] = {"from_tasks": a["members"], "to_tasks": b["members"],
                             "driver_bytes": b["peak_rss_driver"] - a["peak_rss_driver"],
                             "tree_bytes": b["peak_rss_tree"] - a["peak_rss_tree"],
                             "driver_per_1000_tasks": (b["peak_rss_driver"] - a["peak_rss_driver"])
                             / (b["members"] - a["members"]) * 1000,
                             "driver_ratio": b["peak_rss_driver"] / a["peak_rss_driver"],
                             "tree_ratio": b["peak_rss_tree"] / a["peak_rss_tree"]}
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Load: {result['tasks']} tasks through `reglab run`",
             "",
             f"{result['command']} — {m['date']}, {m['cpus']} CPUs, {m['memory_bytes'] / 2 ** 30:.0f} GiB, "
             f"Python {m['python']}, torch {m['torch']}, distributed {m['distributed']}. "
             f"Study: moons 2-500-1 MLP, L2 grid, {result['seeds']} seeds, {result['epochs']} epochs per member; "
             f"torch/numba threads: {result.get('threads', 'default')} (driver and workers). "
             f"The machine was shared with other jobs: load average (1 min) per run below.",
             "",
             "| run | tasks | wall | startup / training / finish | tasks/s (whole / steady) | peak RSS driver | "
             "peak RSS tree (procs) | driver RSS at 10% / 50% / 100% | store | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        name = ("local" if r["executor"] == "local" else f"Dask, {r['workers']} workers") + (
            ", --task-size 1" if r["task_size"] == 1 else ", no --task-size")
        at = r["at_fraction"]
        rss = " / ".join(_mib(at[k]["rss_driver"]) if at.get(k) else "–" for k in ("10%", "50%", "100%"))
        phases = " / ".join(f"{r[k]:.1f}" if r[k] is not None else "–"
                            for k in ("startup_s", "training_s", "finish_s"))
        st = r["store"]
        store = (f"{st['rows']} rows, ok" if st.get("ok") else f"FAILED: {st}")
        many = r["steady_tasks_per_s"] and (r["tasks_planned"] or 0) >= 10   # one or two saves: no rate
        steady = f"{r['steady_tasks_per_s']:.1f}" if many else "–"
        lines.append(f"| {name} | {r['tasks_planned']} | {r['wall_s']:.1f} s | {phases} s | "
                     f"{r['tasks_per_s']:.1f} / {steady} | {_mib(r['peak_rss_driver'])} MiB | "
                     f"{_mib(r['peak_rss_tree'])} MiB ({r['processes']}) | {rss} MiB | {store} | "
                     f"{r['load_before'][0]:.1f} → {r['load_after'][0]:.1f} |")
    lines.append("")
    for executor, g in result["growth"].items():
        lines.append(f"- {executor}: peak RSS from {g['from_tasks']} to {g['to_tasks']} tasks: driver "
                     f"{g['driver_bytes'] / 2 ** 20:+.1f} MiB ({g['driver_ratio']:.2f}×, "
                     f"{g['driver_per_1000_tasks'] / 2 ** 20:.1f} MiB per 1000 tasks), tree "
                     f"{g['tree_bytes'] / 2 ** 20:+.1f} MiB ({g['tree_ratio']:.2f}×).")
    lines += ["", "Tree RSS sums every process (shared pages counted once per process). Startup = to the first "
              "saved row (imports; on Dask also starting the cluster and its workers importing torch); finish = "
              "after the last row (statistics, the printed table, closing the cluster). Steady = (tasks - 1) / "
              "training (– for runs of one or two populations). Every run is a fresh process and database; "
              "the store is checked after each run (rows = tasks, no duplicate (config_key, seed), exactly "
              "the study's pairs, integrity_check ok).", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks of the full run (a multiple of 10)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output-dir", default=str(HERE))
    parser.add_argument("--quick", action="store_true", help="200 tasks (and 20): a minute or two")
    parser.add_argument("--no-compare", action="store_true", help="skip the runs without --task-size")
    parser.add_argument("--only", choices=["local", "dask"], default=None, help="one executor only")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/numba threads of the driver and workers (OMP_NUM_THREADS, NUMBA_NUM_THREADS); "
                             "0: their defaults")
    parser.add_argument("--no-warmup", action="store_true", help="skip the unrecorded 20-task warm-up run")
    parser.add_argument("--keep", default=None, help="keep the studies, databases and logs in this folder")
    parser.add_argument("--render", action="store_true", help="only write load.md again from OUTPUT_DIR/load.json")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads((Path(args.output_dir) / "load.json").read_text(encoding="utf-8"))
        (Path(args.output_dir) / "load.md").write_text(markdown(result), encoding="utf-8")
        return
    tasks = 200 if args.quick else args.tasks
    try:   # the full run and the one with a tenth of the tasks must both split into SEEDS seeds
        grid_values(tasks), grid_values(tasks // 10)
    except ValueError as exc:
        parser.error(f"{exc} (--tasks: a multiple of {10 * SEEDS}, at least {20 * SEEDS})")
    try:
        import psutil  # noqa: F401
    except ImportError:
        sys.exit("psutil is missing: pip install psutil (it comes with 'reglab[dask]')")

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="reglab-load-"))
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/load.py" + (" --quick" if args.quick else f" --tasks {tasks}") + (
        f" --epochs {args.epochs}" if args.epochs != EPOCHS else "") + (
        f" --threads {args.threads}" if args.threads != 1 else "")
    result = {"command": command, "tasks": tasks, "seeds": SEEDS, "epochs": args.epochs,
              "threads": args.threads or "default",
              "interval_s": INTERVAL, "machine": machine(), "runs": []}
    try:
        if not args.no_warmup:   # fill the file cache (torch, numba's kernels): not only the first run cold
            run_case(workdir, 20, "local", epochs=args.epochs, label="warmup", threads=args.threads)
        for spec in plan_runs(tasks, compare=not args.no_compare):
            if args.only and spec["executor"] != args.only:
                continue
            r = run_case(workdir, spec["tasks"], spec["executor"], task_size=spec["task_size"],
                         workers=args.workers, epochs=args.epochs, threads=args.threads)
            result["runs"].append(r)
            print(f"{r['label']:<18} wall {r['wall_s']:7.1f} s  {r['tasks_per_s']:6.1f} tasks/s  peak driver "
                  f"{_mib(r['peak_rss_driver'])} MiB  tree {_mib(r['peak_rss_tree'])} MiB  store "
                  f"{'ok' if r['store'].get('ok') else 'FAILED'}  load {r['load_before'][0]:.1f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["machine"]["load_average_end"] = os.getloadavg()
    result["growth"] = growth(result["runs"])
    (out_dir / "load.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    md = markdown(result)
    (out_dir / "load.md").write_text(md, encoding="utf-8")
    print("\n" + md)
    failed = [r["label"] for r in result["runs"] if r["returncode"] != 0 or not r["store"].get("ok")]
    if failed:
        sys.exit(f"runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
