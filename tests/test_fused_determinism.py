"""The fused kernel gives the same bits whatever the CPU's vector width, the run and the thread count.

Its sums run in a fixed order (reglab.population.fused), so a member's numbers on an AVX-512
machine equal those on an AVX2 or SSE-only one: the same records from every Dask worker and every
CI machine. numba compiles for the CPU named by NUMBA_CPU_NAME, so this machine can check the
narrower widths it supports ('generic' x86-64 is SSE2; 'haswell' is AVX2 with FMA)."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fused_digest import digest  # noqa: E402

SCRIPT = Path(__file__).with_name("fused_digest.py")


def _cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def narrower_cpus() -> list[str]:
    """CPU names numba can compile for and this machine can run, narrower than its own."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return ["generic"]
    flags = _cpu_flags()
    return ["generic"] + (["haswell"] if {"avx2", "fma"} <= flags else [])


@pytest.mark.timeout(600)
def test_the_same_digest_on_every_vector_width_this_machine_runs():
    here = digest()
    procs = {cpu: subprocess.Popen([sys.executable, str(SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=dict(os.environ, NUMBA_CPU_NAME=cpu))
             for cpu in narrower_cpus()}
    for cpu, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        assert out.strip() == here, f"NUMBA_CPU_NAME={cpu} gives other bits than this CPU's own width"


def test_the_same_digest_run_after_run_and_on_any_thread_count():
    first = digest()
    junk = [np.empty(n, np.float32) for n in (3, 17, 129)]   # shift where new arrays land
    assert digest() == first
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert digest() == first
    finally:
        numba.set_num_threads(threads)
    del junk
