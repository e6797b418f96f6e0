"""reglab.threads: the CPUs training may use, REGLAB_THREADS, and the Governor's choices under
contention (a fake clock and a fake machine); results never depend on the thread count."""

import functools
import os
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import torch

import reglab
from reglab import threads as T

sys.path.insert(0, str(Path(__file__).parent))
from test_population import MLP_CONFIGS, blobs, mlp_build, shallow_build  # noqa: E402


# --- the CPUs we may use -------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_available_cpus_follow_the_affinity_mask():
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert T.available_cpus(Path("/nonexistent")) == 1
    finally:
        os.sched_setaffinity(0, before)
    assert T.available_cpus(Path("/nonexistent")) == len(before)


@pytest.mark.parametrize("files, cpus", [
    ({"cpu.max": "150000 100000\n"}, 1.5),            # cgroup v2: one and a half CPUs
    ({"cpu.max": "max 100000\n"}, None),              # no quota
    ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2.0),   # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    ({"cpu.max": "garbage"}, None),
])
def test_cgroup_quota(tmp_path, files, cpus):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert T._cgroup_cpus(tmp_path) == cpus


def test_a_quota_caps_the_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text("50000 100000\n")     # half a CPU: still one thread
    assert T.available_cpus(tmp_path) == 1


@pytest.mark.parametrize("value, expected", [("1", 1), ("3", 3), (" 2 ", 2), ("auto", None), ("", None)])
def test_reglab_threads_is_read(monkeypatch, value, expected):
    monkeypatch.setenv("REGLAB_THREADS", value)
    assert T.requested() == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_reglab_threads_names_the_variable_and_what_is_allowed(monkeypatch, value):
    monkeypatch.setenv("REGLAB_THREADS", value)
    with pytest.raises(ValueError, match=r"REGLAB_THREADS must be an integer >= 1 or 'auto'"):
        T.requested()


def test_reglab_threads_pins_the_governor(monkeypatch):
    monkeypatch.setenv("REGLAB_THREADS", "1")
    g = T.Governor.for_training()
    assert (g.high, g.adaptive) == (1, False)
    monkeypatch.delenv("REGLAB_THREADS")
    assert T.Governor.for_training(threads=2).adaptive is False


# --- the governor on a fake machine --------------------------------------------------------------

class Machine:
    """A fake clock and CPU: a tick takes 1 / speed[(threads, contended)] seconds; others' CPU time
    grows by `competitors` CPUs per second."""

    def __init__(self, speed, competitors=0):
        self.speed, self.competitors, self.now, self.busy, self.threads = speed, competitors, 0.0, 0.0, None

    def clock(self):
        return self.now

    def others(self):
        return self.busy

    def apply(self, n):
        self.threads = n

    def run(self, governor, ticks):
        seen = []
        for _ in range(ticks):
            dt = 1.0 / self.speed[(self.threads, self.competitors > 0)]
            self.now += dt
            self.busy += self.competitors * dt
            governor.tick(1)
            seen.append(self.threads)
        return seen


SPEED = {(2, False): 100.0, (1, False): 55.0, (2, True): 35.0, (1, True): 50.0}


def governor(m, running=0, **kw):
    return T.Governor(high=2, clock=m.clock, others=m.others, running=lambda: running, apply=m.apply, **kw)


def test_a_quiet_machine_keeps_every_thread_and_never_probes():
    m = Machine(SPEED)
    g = governor(m)
    assert set(m.run(g, 2000)) == {2}
    assert all(threads == 2 for threads, _, _ in g.log)


def test_under_contention_one_thread_is_tried_at_once_and_kept_while_it_is_faster():
    m = Machine(SPEED, competitors=1)
    g = governor(m)
    seen = m.run(g, 3000)
    assert seen[0] == 2 and g.log[0][0] == 2 and g.log[1][0] == 1   # one window on 2, then 1 at once
    assert seen[-1] == 1
    windows = [threads for threads, _, _ in g.log]
    assert windows.count(1) > 8 * windows.count(2)                  # 2 threads only as rare probes
    # Each probe that changes nothing doubles the wait before the next (8, 16, 32, ... windows).
    probes = [i for i, t in enumerate(windows) if t == 2][1:]
    gaps = np.diff(probes)
    assert (gaps[1:] >= gaps[:-1]).all() and gaps[-1] > gaps[0]


def test_a_busy_machine_at_the_start_starts_on_one_thread():
    m = Machine(SPEED, competitors=1)
    g = governor(m, running=1)
    assert m.run(g, 1)[0] == 1


def test_when_contention_ends_every_thread_comes_back():
    m = Machine(SPEED, competitors=1)
    g = governor(m)
    m.run(g, 500)
    assert m.threads == 1
    m.competitors = 0
    assert m.run(g, 200)[-1] == 2


def test_when_every_thread_is_faster_even_under_contention_it_is_kept():
    m = Machine({(2, True): 80.0, (1, True): 50.0, (2, False): 100.0, (1, False): 55.0}, competitors=1)
    g = governor(m)
    seen = m.run(g, 2000)
    assert seen[-1] == 2 and seen.count(2) > 0.8 * len(seen)


def test_without_a_load_reading_it_probes_by_timing_alone():
    m = Machine(SPEED, competitors=1)
    g = T.Governor(high=2, clock=m.clock, others=lambda: None, running=lambda: None, apply=m.apply)
    assert m.run(g, 2000)[-1] == 1


def test_a_pinned_governor_changes_nothing():
    m = Machine(SPEED, competitors=2)
    g = T.Governor(high=2, adaptive=False, clock=m.clock, others=m.others, apply=m.apply)
    assert set(m.run(g, 1000)) == {2} and g.log == []


# --- in training -----------------------------------------------------------------------------------

def _weights(result):
    return [torch.cat([v.detach().flatten() for v in m.state_dict().values()]) for m in result.models]


@pytest.mark.parametrize("path", ["fused", "generic"])
def test_results_do_not_depend_on_the_thread_count(path):
    build, configs = ((functools.partial(shallow_build, hidden=40), [dict(l2=1e-3), dict(l1=1e-3)])
                      if path == "fused" else (mlp_build, MLP_CONFIGS[:2]))
    runs = [reglab.train_population(build, configs, [0, 1], train=blobs(96), validation=blobs(32, seed=1),
                                    epochs=4, batch_size=16, progress=False, threads=n) for n in (1, 2)]
    for a, b in zip(_weights(runs[0]), _weights(runs[1])):
        assert torch.equal(a, b)
    for key in runs[0].history:
        np.testing.assert_array_equal(runs[0].history[key], runs[1].history[key])


def test_training_leaves_the_thread_counts_as_it_found_them():
    before = (torch.get_num_threads(), numba.get_num_threads())
    reglab.train_population(shallow_build, [dict()], [0], train=blobs(32), epochs=2, progress=False, threads=1)
    reglab.train_population(shallow_build, [dict()], [0], train=blobs(32), epochs=2, progress=False)
    assert (torch.get_num_threads(), numba.get_num_threads()) == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_a_bad_thread_count_is_refused_before_training(bad):
    with pytest.raises((TypeError, ValueError), match="threads"):
        reglab.train_population(shallow_build, [dict()], [0], train=blobs(32), epochs=1, progress=False, threads=bad)


# --- the command line ------------------------------------------------------------------------------

def _cli(args, env=None, cwd=None):
    from click.testing import CliRunner

    from reglab.cli import main

    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def test_reglab_run_threads_pins_the_count(tmp_path, monkeypatch):
    study = Path(reglab.__file__).parent / "examples" / "moons_l2.toml"
    monkeypatch.delenv("REGLAB_THREADS", raising=False)
    made = []
    original = T.Governor.for_training.__func__
    monkeypatch.setattr(T.Governor, "for_training", classmethod(lambda cls, t=None: made.append(original(cls, t)) or made[-1]))
    result = _cli(["run", str(study), "--seeds", "2", "--epochs", "3", "--threads", "1", "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 0, result.output
    assert made and all((g.high, g.adaptive) == (1, False) for g in made)
    os.environ.pop("REGLAB_THREADS", None)


@pytest.mark.parametrize("args, env, message", [
    (["--threads", "0"], {}, "Invalid value for '--threads'"),
    ([], {"REGLAB_THREADS": "zero"}, "REGLAB_THREADS must be an integer >= 1 or 'auto'. Got 'zero' instead."),
])
def test_a_bad_thread_count_on_the_command_line_is_one_line_and_writes_nothing(tmp_path, args, env, message):
    study = Path(reglab.__file__).parent / "examples" / "moons_l2.toml"
    result = _cli(["run", str(study), "--db", str(tmp_path / "r.db"), *args], env=env)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "r.db").exists()


def test_on_four_cpus_one_competitor_leaves_three_threads_not_one():
    speed = {(4, True): 60.0, (3, True): 150.0, (1, True): 55.0, (4, False): 200.0, (3, False): 150.0}
    m = Machine(speed, competitors=1)
    g = T.Governor(high=4, clock=m.clock, others=m.others, running=lambda: 0, apply=m.apply)
    seen = m.run(g, 3000)
    assert seen[-1] == 3 and 1 not in seen
