"""How many threads training uses, and what it does when other processes share the CPU.

A population steps all its members in parallel loops (numba's ``prange`` in the fused kernel,
PyTorch's intra-op threads elsewhere). Each step is a fork-join region: it ends when its slowest
thread ends. When another process holds one of the cores, one of our threads is descheduled for
whole time slices and the others wait for it at every step, so on a busy 2-core machine two
threads ran the seed MLP 3× slower than on a quiet one, and slower than one thread.

reglab therefore:

- uses at most :func:`max_threads` threads: ``REGLAB_THREADS`` if set (an integer ≥ 1, or
  ``auto``), else the CPUs this process may run on (``os.sched_getaffinity``), capped by a cgroup
  CPU quota (``cpu.max``, as in containers);
- trains a population under a :class:`Governor`, which watches what other processes use of the CPU:
  on a quiet machine it keeps every thread; when the CPU is shared it times the CPUs the others
  leave against all of them and runs on whichever is faster now, checking again now and then, so
  contention that comes or goes mid-run is followed;
- asks OpenMP to sleep instead of spin at its barriers (``OMP_WAIT_POLICY=PASSIVE``, set before
  PyTorch loads unless you set it yourself), so idle threads do not steal the busy core;
- hands the fused kernel's members to threads in small chunks (dynamic scheduling), so a thread
  that runs faster takes more of them.

The thread count never changes a result: every member's arithmetic is the same on any number of
threads (see :mod:`reglab.population.fused`). ``REGLAB_THREADS=1`` (or ``threads=1``) pins one
thread; ``REGLAB_THREADS=N`` pins N threads and turns the governor off.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

ENV = "REGLAB_THREADS"


def _cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (cgroup v2 ``cpu.max`` or v1 CFS), or None."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # pragma: no cover - macOS, Windows
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus(cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def requested() -> int | None:
    """``REGLAB_THREADS`` as an int, or None when unset, empty or ``auto``.

    >>> import os; os.environ["REGLAB_THREADS"] = "1"; requested()
    1
    >>> del os.environ["REGLAB_THREADS"]; requested() is None
    True
    """
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"The environment variable {ENV} must be an integer >= 1 or 'auto'. Got {value!r} instead.")
    return threads


def _numba_limit() -> int | None:
    try:
        from numba.core import config
    except ImportError:   # pragma: no cover - numba is a dependency
        return None
    return int(config.NUMBA_NUM_THREADS)


def max_threads() -> int:
    """The most threads training uses: ``REGLAB_THREADS``, else :func:`available_cpus`."""
    threads = requested() or available_cpus()
    limit = _numba_limit()
    return min(threads, limit) if limit else threads


def set_threads(n: int) -> None:
    """Run PyTorch's and numba's parallel work on ``n`` threads (numba first: starting its OpenMP
    pool resets PyTorch's count)."""
    import torch

    try:
        import numba

        if numba.get_num_threads() != n:
            numba.set_num_threads(min(n, _numba_limit() or n))
    except (ImportError, ValueError, RuntimeError):   # pragma: no cover - numba is a dependency
        pass
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@contextlib.contextmanager
def restored():
    """Restore PyTorch's and numba's thread counts, as they were, when the block ends."""
    import torch

    before_torch = torch.get_num_threads()
    try:
        import numba

        before_numba = numba.get_num_threads()
    except ImportError:   # pragma: no cover - numba is a dependency
        numba, before_numba = None, None
    try:
        yield
    finally:
        if numba is not None:
            numba.set_num_threads(before_numba)   # first: it resets PyTorch's count
        torch.set_num_threads(before_torch)


@contextlib.contextmanager
def using(n: int):
    """Run the block on ``n`` threads, then restore the previous counts."""
    with restored():
        set_threads(n)
        yield


def _others_busy_seconds() -> float | None:
    """CPU seconds spent so far by everything on this machine except this process (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if len(fields) < 4:
        return None
    values = [int(v) for v in fields[:8]]
    busy = (sum(values) - values[3] - (values[4] if len(values) > 4 else 0)) / ticks   # all but idle, iowait
    own = os.times()
    return busy - (own.user + own.system)


def _others_running_now() -> int | None:
    """Processes (threads) other than this one running or runnable right now (Linux), or None."""
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - 1)


# The last choice of any governor in this process, (clock, threads): the next population of a study
# starts where the previous one ended instead of measuring again from scratch.
_last_choice: tuple[float, int] | None = None
_REMEMBER_S = 10.0


class Governor:
    """Chooses the thread count while a training loop runs.

    Call :meth:`tick` after each unit of work (an epoch) with how much work it was (e.g. the members
    still training). The loop starts on ``high`` threads. Every ``window`` seconds the governor
    looks at what else ran on the machine meanwhile (``/proc/stat`` minus this process's own CPU
    time). On a quiet machine it stays on ``high`` threads. When other processes took at least
    ``busy`` CPUs, it times one window on the other count (``high``, or the CPUs the others leave:
    :meth:`fair`), keeps whichever did more
    work per second, and checks again after ``hold`` windows (twice as long each time the check
    changes nothing, up to ``max_hold``), so contention that comes or goes mid-run is followed.
    Where the machine's load cannot be read, it probes by timing alone. It starts on the CPUs left
    when other processes are running at that moment, or where the previous governor of this process
    ended if that was a moment ago. The first tick (compilation, warm-up) is not measured.

    >>> Governor(high=1).threads
    1
    """

    def __init__(self, high: int | None = None, *, adaptive: bool = True, window: float = 0.2, hold: int = 16,
                 max_hold: int = 128, busy: float = 0.3, clock=time.perf_counter, others=_others_busy_seconds,
                 running=_others_running_now, apply=set_threads):
        self.high = max_threads() if high is None else max(1, int(high))
        self.adaptive = adaptive and self.high > 1
        self.window, self.base_hold, self.hold, self.max_hold, self.busy = window, hold, hold, max_hold, busy
        self.clock, self.others, self.apply = clock, others, apply
        self.threads = self.high
        if self.adaptive:
            now, busy_now = clock(), running()
            if _last_choice is not None and now - _last_choice[0] < _REMEMBER_S and clock is time.perf_counter:
                self.threads = min(_last_choice[1], self.high)
            elif busy_now is not None and busy_now >= 1:
                self.threads = self.fair(busy_now)
        self.rates: dict[int, float] = {}         # threads -> the latest rate measured (work / s)
        self.log: list[tuple[int, float, float | None]] = []   # every window: (threads, rate, others' CPUs)
        self._probe_from = None                   # the count a probe window left, while it runs
        self._held = 0                            # windows since the last choice
        self._start = self._others = None
        self._work = 0.0
        self.apply(self.threads)

    @classmethod
    def for_training(cls, threads: int | None = None) -> "Governor":
        """Pinned to ``threads`` (or to ``REGLAB_THREADS`` when set), else adaptive over the usable CPUs."""
        pinned = threads or requested()
        if pinned:
            return cls(high=pinned, adaptive=False)
        return cls()

    def tick(self, work: float = 1.0) -> None:
        if not self.adaptive:
            return
        now = self.clock()
        if self._start is None:   # the first unit pays for compilation and first touches: not a rate
            self._start, self._others, self._work = now, self.others(), 0.0
            return
        self._work += work
        elapsed = now - self._start
        if elapsed < self.window:
            return
        others = self.others()
        load = None if others is None or self._others is None else max(0.0, others - self._others) / elapsed
        rate = self._work / elapsed
        self.rates[self.threads] = rate
        self.log.append((self.threads, rate, load))
        self._start, self._others, self._work = now, others, 0.0
        self._next(load)

    def fair(self, others: float) -> int:
        """The CPUs left when other processes use ``others`` of them (at least one thread).

        >>> g = Governor(high=4, apply=lambda n: None); g.fair(1.0), g.fair(0.5), g.fair(9)
        (3, 3, 1)
        """
        return max(1, min(self.high - 1, self.high - math.ceil(others - self.busy)))

    def _switch(self, threads: int) -> None:
        global _last_choice
        if threads != self.threads:
            self.threads = threads
            self.apply(threads)
        if self.clock is time.perf_counter and self._probe_from is None:
            _last_choice = (self.clock(), self.threads)

    def _next(self, load: float | None) -> None:
        if self._probe_from is not None:          # a probe window just ended: keep the faster count
            other, self._probe_from = self._probe_from, None
            self._held = 0
            if self.rates.get(other, 0.0) > self.rates[self.threads]:
                self._switch(other)                                  # the probe lost: check less often
                self.hold = min(2 * self.hold, self.max_hold)
            else:
                self._switch(self.threads)
                self.hold = self.base_hold
            return
        self._held += 1
        if load is not None and load < self.busy:  # nobody else wants the CPUs: use them all
            self._switch(self.high)
            return
        # Shared: time the other count now and then. Fewer threads (the CPUs the others leave) are
        # cheap to try under contention, so they are tried at once; all of them again after `hold`
        # windows.
        fewer = self.fair(load if load is not None else self.high)
        if self.threads == self.high and fewer not in self.rates:
            self._probe_from = self.threads
            self._switch(fewer)
        elif self._held >= self.hold:
            self._probe_from = self.threads
            self._switch(fewer if self.threads == self.high else self.high)


__all__ = ["ENV", "Governor", "available_cpus", "max_threads", "requested", "restored", "set_threads", "using"]
