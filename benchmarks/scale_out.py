"""The same study on the local executor and on a local Dask cluster: wall time and overhead per task.

    python benchmarks/scale_out.py [STUDY.toml] [--seeds N] [--epochs N] [--workers 2] [--repeat 2]

Defaults: examples/moons_l2.toml (the seeds' MLP, fused kernel) with its 30 seeds and 4000 epochs.
Nothing is written to a database: every run trains every (variant, seed).

Measured, with time.perf_counter:
- local        ``reglab.study.run`` with the local executor (one population per training group), with
               torch's and numba's default thread counts and with one thread each, after a warm-up;
- cluster      starting ``DaskExecutor(workers=N)`` (a LocalCluster of N processes, one thread each);
- first run    the first Dask run: the workers import torch and reglab and load numba's kernels;
- warm runs    later Dask runs, with the seconds the workers spent inside the tasks
               (``reglab.study.dask.arrivals``);
- wall         the whole ``run`` (planning, training, the driver's summary); "training" is the time
               inside the executor's ``map`` (first task submitted to last result back);
- overhead per task = (N x training wall - worker seconds inside tasks) / tasks: the time a worker
               slot is not training, spread over the tasks (dispatch, shipping data and records,
               rebuilding the study, waiting for the last task).
Prints a Markdown table and the JSON of every measurement, with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", default=str(ROOT / "examples" / "moons_l2.toml"))
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from reglab import study as st
    from reglab.study import jobs, train
    from reglab.study.dask import DaskExecutor, arrivals

    def load():
        return st.load(args.study, seeds=args.seeds, epochs=args.epochs)

    study = load()
    dataset = st.prepare(study)
    out = {"study": study.name, "seeds": len(study.seeds), "epochs": study.training.get("epochs"),
           "variants": len(study.variants), "workers": args.workers, "cpus": os.cpu_count(),
           "python": platform.python_version(), "load_before": os.getloadavg()}

    def timed(executor, key):
        walls, trainings = out.setdefault(key + "_s", []), out.setdefault(key + "_training_s", [])
        timer = Timed(executor)
        start = time.perf_counter()
        st.run(load(), dataset=dataset, executor=timer)
        walls.append(time.perf_counter() - start)
        trainings.append(timer.seconds)

    import numba
    import torch

    st.run(load(), dataset=dataset)   # warm-up: numba loads its kernels and starts its thread pool
    threads = torch.get_num_threads(), numba.get_num_threads()
    out["local_threads"] = list(threads)
    for _ in range(args.repeat):
        timed(train.LocalExecutor(), "local")
    numba.set_num_threads(1)   # numba first: starting its OpenMP pool resets torch's thread count
    torch.set_num_threads(1)
    for _ in range(args.repeat):
        timed(train.LocalExecutor(), "local_1thread")
    numba.set_num_threads(threads[1])
    torch.set_num_threads(threads[0])
    out["local_tasks"] = len(jobs.plan(study, study.variants, set(), train.LocalExecutor.chunks))

    start = time.perf_counter()
    with DaskExecutor(workers=args.workers) as ex:
        out["cluster_start_s"] = time.perf_counter() - start
        out["dask_tasks"] = len(jobs.plan(study, study.variants, set(), ex.chunks))
        timed(ex, "first")
        out["worker_task_s"], out["overhead_per_task_s"] = [], []
        for _ in range(args.repeat):
            before = ex.client.run(arrivals)
            timed(ex, "warm")
            after = ex.client.run(arrivals)
            busy = sum(after[w]["seconds"] - before.get(w, {}).get("seconds", 0.0) for w in after)
            out["worker_task_s"].append(busy)
            out["overhead_per_task_s"].append((args.workers * out["warm_training_s"][-1] - busy) / out["dask_tasks"])
        start = time.perf_counter()
    out["cluster_close_s"] = time.perf_counter() - start
    out["load_after"] = os.getloadavg()

    def best(key):
        i = min(range(len(out[key + "_s"])), key=lambda j: out[key + "_s"][j])
        return out[key + "_s"][i], out[key + "_training_s"][i], i

    print(f"| {study.name}: {out['variants']} variants x {out['seeds']} seeds, {out['epochs']} epochs "
          f"| wall (whole run) | training (map) |")
    print("|---|---|---|")
    for key, label in (("local", f"local executor, {out['local_tasks']} population(s), "
                                 f"torch/numba threads {threads[0]}/{threads[1]}"),
                       ("local_1thread", "local executor, 1 thread"),
                       ("first", f"Dask {args.workers}-worker LocalCluster, first run (workers import torch)"),
                       ("warm", f"Dask {args.workers}-worker LocalCluster, warm ({out['dask_tasks']} tasks)")):
        wall, training, _ = best(key)
        print(f"| {label} | {wall:.2f} s | {training:.2f} s |")
    _, _, i = best("warm")
    print(f"\nDask: cluster start {out['cluster_start_s']:.2f} s, close {out['cluster_close_s']:.2f} s; "
          f"worker seconds inside tasks {out['worker_task_s'][i]:.2f} s; overhead per task "
          f"{out['overhead_per_task_s'][i]:.3f} s")
    print(f"load average before {out['load_before'][0]:.2f}, after {out['load_after'][0]:.2f} "
          f"on {out['cpus']} CPUs")
    print(json.dumps(out))


class Timed:
    """An executor that times its ``map``: first task submitted to last result back."""

    def __init__(self, executor):
        self.executor, self.seconds = executor, 0.0

    @property
    def chunks(self):
        return self.executor.chunks

    def map(self, *args, **kwargs):
        start = time.perf_counter()
        yield from self.executor.map(*args, **kwargs)
        self.seconds += time.perf_counter() - start


if __name__ == "__main__":
    main()
