"""How far a running study has got: members finished, member-epochs trained, the time left.

:class:`RunProgress` follows one call of :func:`reglab.study.run` over all its tasks. Its
:meth:`~RunProgress.callback` is passed to each population's ``train_population`` (local
executor) and counts member-epochs as they train; a task that finishes elsewhere (Dask) counts
whole when its records arrive. It shows

- on a terminal, one tqdm bar for the run: members finished, member-epochs, elapsed < remaining;
- otherwise (``lines=True``), one plain line through ``echo`` every ``LINE_SECONDS`` (``reglab run > log``)::

      reglab: 12/25 members finished, 3,400/12,500 member-epochs, ETA 4 min

- in the store, every ``STATUS_SECONDS``, what is training now (:meth:`reglab.store.Store.report_training`),
  which `reglab status` prints with its age, so that a run that stopped reporting shows as stale.

Member-epochs count ``members × epochs`` of every task the run plans; a member that early stopping
stops counts its remaining epochs as done. The ETA is the member-epochs left at the run's rate so
far (seconds since the run started per member-epoch trained). The lines and the store are written
by a background thread, so they keep their pace even through a long epoch or while Dask workers
train.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .._timefmt import duration  # noqa: F401 - progress lines and reglab status say times alike
from ..callbacks import Callback

LINE_SECONDS = 30.0     # a plain progress line at least this often when the output is not a terminal
STATUS_SECONDS = 5.0    # how often the running process writes its progress to the store


class RunProgress:
    """The progress of one run (see the module). ``bar``: show a tqdm bar (on stderr; tqdm's
    notebook bar in Jupyter); ``lines``: print a plain line through ``echo`` every ``LINE_SECONDS``;
    ``echo``: where the lines and :meth:`note` go (None: nowhere); ``store`` and ``study_id``:
    where the progress is written for `reglab status` (None: nowhere).

    Use it as a context manager around the run; :meth:`plan` adds the tasks of each round of
    training, :meth:`callback` follows one task as it trains, :meth:`dropped` forgets a task that
    was stopped to be cut into pieces, :meth:`finished` counts a task whose records are saved."""

    def __init__(self, *, bar: bool = False, lines: bool = False, echo=None, store=None, study_id=None):
        self.show_bar, self.echo, self.store, self.study_id = bar, echo, store, study_id
        self.lines = lines and echo is not None
        self.members = [0, 0]          # finished, planned
        self.member_epochs = [0, 0]    # done (trained, or skipped by early stopping), planned
        self.trained = 0               # member-epochs trained (aborted tasks included: they took the time)
        self.tasks: dict = {}          # task -> its state while it trains
        self.bar = None
        self.start = time.perf_counter()
        self._lock = threading.Lock()
        self._wake = threading.Event()   # set: stop, or write the store now (a plan, a population's first epoch)
        self._stopping = False
        self._thread = None

    # -- lifetime ------------------------------------------------------------------------------

    def __enter__(self) -> RunProgress:
        self.start = time.perf_counter()
        if self.lines or self.store is not None:
            self._thread = threading.Thread(target=self._beat, name="reglab-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)   # it may be waiting on a busy database: never hold the exit up long
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def note(self, text: str) -> None:
        """Print one line through ``echo`` without breaking the bar."""
        if self.echo is None:
            return
        if self.bar is not None:
            with self.bar.external_write_mode():
                self.echo(text)
        else:
            self.echo(text)

    # -- what the run reports ----------------------------------------------------------------------

    def plan(self, tasks, epochs_of) -> None:
        """Add ``tasks`` (``epochs_of(task)``: its epochs) to what this run trains."""
        with self._lock:
            for task in tasks:
                n = len(task.variants) * len(task.seeds)
                self.members[1] += n
                self.member_epochs[1] += n * epochs_of(task)
        if self.show_bar and self.member_epochs[1]:
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=self.member_epochs[1], unit="member-epoch", delay=2, dynamic_ncols=True,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} member-epochs "
                                           "[{elapsed}<{remaining}]")
            self.bar.total = self.member_epochs[1]
            self._show()
        self._wake.set()

    def callback(self, task, epochs: int) -> Callback:
        """The callback that follows ``task`` (of ``epochs`` epochs) in its ``train_population``."""
        with self._lock:
            self.tasks[task] = {"members": len(task.variants) * len(task.seeds), "epochs": epochs, "epoch": 0,
                                "done": {}}
        return _Follow(self, task)

    def dropped(self, task) -> None:
        """``task`` was stopped and will train again as pieces: its member-epochs are not done."""
        with self._lock:
            state = self.tasks.pop(task, None)
            if state is not None:
                self.member_epochs[0] -= sum(state["done"].values())
        self._show()

    def finished(self, task, epochs: int) -> None:
        """``task`` (of ``epochs`` epochs) finished and its records are saved."""
        n = len(task.variants) * len(task.seeds)
        with self._lock:
            state = self.tasks.pop(task, None)
            counted = sum(state["done"].values()) if state is not None else 0
            if state is None:   # trained elsewhere (Dask): it counts when it arrives
                self.trained += n * epochs
            self.member_epochs[0] += n * epochs - counted
            self.members[0] += n
        self._show()

    def _epoch(self, task, trainer, epoch, logs) -> None:
        with self._lock:
            state = self.tasks.get(task)
            if state is None:
                return
            key = trainer.members[0]   # one chunk of the task's members (train_population's memory budget)
            before = state["done"].get(key, 0)
            if logs is None:           # the chunk ended: every member's epochs are done
                now = len(trainer.members) * trainer.epochs
            else:
                now = int(np.where(trainer.active, epoch + 1, trainer.epochs).sum())
                self.trained += int(np.count_nonzero(~np.isnan(next(iter(logs.values())))))
                first, state["epoch"] = state["epoch"] == 0, epoch + 1
                if first:
                    self._wake.set()   # status shows the population as soon as it trains
            state["done"][key] = now
            self.member_epochs[0] += now - before
        self._show()

    # -- what it shows -----------------------------------------------------------------------------

    def eta(self) -> float | None:
        """Seconds left at the rate so far, or None before anything has trained."""
        if not self.trained:
            return None
        rate = (time.perf_counter() - self.start) / self.trained
        return rate * max(0, self.member_epochs[1] - self.member_epochs[0])

    def line(self) -> str:
        """``reglab: 12/25 members finished, 3,400/12,500 member-epochs, ETA 4 min``."""
        eta = self.eta()
        return (f"reglab: {self.members[0]}/{self.members[1]} members finished, "
                f"{self.member_epochs[0]:,}/{self.member_epochs[1]:,} member-epochs"
                + (f", ETA {duration(eta)}" if eta is not None else ""))

    def snapshot(self) -> dict:
        """What the store keeps for `reglab status`: the populations training now (members, epoch
        reached, epochs; none known for tasks on Dask), this run's members and member-epochs
        (done, planned) and the seconds left."""
        with self._lock:
            populations = [{"members": s["members"], "epoch": s["epoch"], "epochs": s["epochs"]}
                           for s in self.tasks.values()]
            members, member_epochs = list(self.members), list(self.member_epochs)
        eta = self.eta()
        return {"populations": populations, "members": members, "member_epochs": member_epochs,
                "eta_s": None if eta is None else round(eta, 1)}

    def _show(self) -> None:
        bar = self.bar
        if bar is None:
            return
        bar.set_description_str(f"{self.members[0]}/{self.members[1]} members", refresh=False)
        bar.update(self.member_epochs[0] - bar.n)

    def _beat(self) -> None:
        """The background thread: the store every STATUS_SECONDS (and when woken), a line every LINE_SECONDS."""
        now = time.monotonic()
        next_status, next_line = now, now + LINE_SECONDS
        while not self._stopping:
            now = time.monotonic()
            if self.store is not None and now >= next_status:
                next_status = now + STATUS_SECONDS
                try:
                    self.store.report_training(self.study_id, self.snapshot())
                except Exception:   # progress is best effort: a busy or closed database must not stop training
                    pass
            if self.lines and now >= next_line:
                next_line = now + LINE_SECONDS
                if self.members[1]:
                    self.echo(self.line())
            due = min(next_status if self.store is not None else float("inf"),
                      next_line if self.lines else float("inf"))
            if self._wake.wait(max(0.01, due - time.monotonic())):
                self._wake.clear()
                next_status = min(next_status, time.monotonic() + 1.0)   # soon, but at most one write a second


class _Follow(Callback):
    """Counts one task's member-epochs for :class:`RunProgress`; overrides only ``on_epoch_end`` and
    ``on_train_end``, so the fused kernel still runs."""

    def __init__(self, progress: RunProgress, task):
        self.progress, self.task = progress, task

    def on_epoch_end(self, trainer, epoch, logs, **kwargs):
        self.progress._epoch(self.task, trainer, epoch, logs)

    def on_train_end(self, trainer, **kwargs):
        self.progress._epoch(self.task, trainer, None, None)
