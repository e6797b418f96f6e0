"""benchmarks/load.py's core on a tiny study: the real CLI in a subprocess, sampled while it runs,
and a store with exactly one row per (variant, seed). No timing assertions."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil", reason="psutil comes with 'reglab[dask]'")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "load.py"


@pytest.fixture(scope="module")
def load():
    spec = importlib.util.spec_from_file_location("reglab_bench_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pairs(db):
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT variant, seed FROM results").fetchall()
    finally:
        conn.close()


def _check(result, load, tmp_path, tasks=20):
    assert result["returncode"] == 0, result.get("log_tail")
    assert result["tasks_planned"] == tasks   # --task-size 1: one population per (variant, seed)
    store = result["store"]
    assert store == {**store, "rows": tasks, "duplicates": 0, "pairs_match": True, "integrity_check": "ok", "ok": True}
    pairs = _pairs(tmp_path / f"{result['label']}.db")
    expected = {(name, seed) for name in load.variant_names(tasks) for seed in range(load.SEEDS)}
    assert len(pairs) == tasks and set(pairs) == expected
    assert result["peak_rss_driver"] > 0 and result["peak_rss_tree"] >= result["peak_rss_driver"]
    assert result["at_fraction"]["100%"] is None or result["at_fraction"]["100%"]["rows"] == tasks
    json.dumps(result)   # what load.json keeps


def test_study_file_and_grid(load):
    text = load.study_text(2000)
    assert 'refine = false' in text and "seeds = 10" in text
    assert len(load.variant_names(2000)) == 200 == len(set(load.variant_names(2000)))
    with pytest.raises(ValueError):
        load.grid_values(15)


def test_local_run_has_one_row_per_variant_and_seed(load, tmp_path):
    result = load.run_case(tmp_path, 20, "local", epochs=2)
    _check(result, load, tmp_path)
    assert result["processes"] == 1


@pytest.mark.timeout(300)   # ~15 s on a quiet 2-core machine (two workers import torch); ~40 s on a busy one
def test_dask_run_has_one_row_per_variant_and_seed(load, tmp_path):
    pytest.importorskip("distributed", reason="dask[distributed] is not installed: pip install 'reglab[dask]'")
    result = load.run_case(tmp_path, 20, "dask", workers=2, epochs=2)
    _check(result, load, tmp_path)
    assert result["processes"] >= 3   # the driver and two workers, at least


def test_report_tables(load):
    run = {"executor": "local", "workers": None, "task_size": 1, "members": 20, "tasks_planned": 20, "wall_s": 1.0,
           "startup_s": 0.5, "training_s": 0.4, "finish_s": 0.1, "tasks_per_s": 20.0, "steady_tasks_per_s": 47.5,
           "peak_rss_driver": 2 ** 29, "peak_rss_tree": 2 ** 29, "processes": 1,
           "at_fraction": {"10%": None, "50%": None, "100%": None}, "store": {"ok": True, "rows": 20},
           "load_before": (1.0, 1.0, 1.0), "load_after": (1.0, 1.0, 1.0)}
    big = {**run, "members": 200, "tasks_planned": 200, "peak_rss_driver": 2 ** 29 + 2 ** 20}
    growth = load.growth([run, big])
    assert growth["local"]["driver_bytes"] == 2 ** 20
    result = {"tasks": 200, "command": "python benchmarks/load.py --quick", "seeds": 10, "epochs": 2,
              "machine": {"date": "today", "cpus": 2, "memory_bytes": 2 ** 30, "python": "3", "torch": "2",
                          "distributed": "x"}, "runs": [run, big], "growth": growth}
    md = load.markdown(result)
    assert "| local, --task-size 1 | 200 |" in md and "+1.0 MiB" in md
