"""Plan a study's training: the populations ("jobs") still to train.

Variants whose training settings agree but for the per-member ones train as one population
(:func:`group_key`); a job is such a group's variants × the seeds they still miss,
on one train/test split. The local executor trains jobs one after another, Dask many at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import spec as S

# Training settings that may differ between the members of one population (one value per member).
PER_MEMBER = ("lr", "label_smoothing", "class_weight")


def group_key(training: dict) -> str:
    """Variants whose training settings agree but for the per-member ones (``PER_MEMBER``) train as
    one population: this key groups them."""
    shared = {k: v for k, v in training.items() if k not in PER_MEMBER}
    return json.dumps(shared, sort_keys=True)


@dataclass(frozen=True)
class Job:
    """One population to train: some variants (sharing training settings) × some seeds, on the
    data of one train/test split."""

    variants: tuple
    seeds: tuple
    split: int = 0


def plan(study: S.Study, variants, done: set, chunks: int = 1, task_size: int | None = None) -> list[Job]:
    """The populations still to train: variants grouped by training settings, by train/test split
    and by the seeds they miss (``done`` holds finished (config_key, split, seed) triples, or
    (config_key, seed) pairs of split 0); each split into ``chunks`` seed chunks, and further so that
    no task has more than ``task_size`` members."""
    done = {d if len(d) == 3 else (d[0], 0, d[1]) for d in done}
    groups: dict[str, list] = {}
    for v in variants:
        groups.setdefault(group_key(v.training), []).append(v)
    tasks = []
    for members in groups.values():
        for split in range(study.splits):
            by_missing: dict[tuple, list] = {}
            for v in members:
                missing = tuple(s for s in study.seeds if (v.key, split, s) not in done)
                if missing:
                    by_missing.setdefault(missing, []).append(v.name)
            for seeds, names in by_missing.items():
                size = -(-len(seeds) // max(1, chunks))
                for i in range(0, len(seeds), size):
                    tasks += cut(Job(tuple(names), seeds[i:i + size], split), task_size)
    return tasks


def cut(task: Job, task_size: int | None) -> list[Job]:
    """``task`` cut into tasks of at most ``task_size`` members (variants × seeds)."""
    if task_size is None or len(task.variants) * len(task.seeds) <= task_size:
        return [task]
    if len(task.variants) > task_size:   # one seed at a time, variants in groups of task_size
        return [Job(task.variants[i:i + task_size], (seed,), task.split)
                for seed in task.seeds for i in range(0, len(task.variants), task_size)]
    step = task_size // len(task.variants)
    return [Job(task.variants, task.seeds[i:i + step], task.split) for i in range(0, len(task.seeds), step)]


def pairs(study) -> list[tuple[int, int]]:
    """The study's (split, seed) pairs, split by split: what the statistics pair variants on."""
    return [(k, s) for k in range(study.splits) for s in study.seeds]


def with_grid_points(study: S.Study, values) -> list:
    """The grid variants of strengths ``values`` the study does not have yet, added to
    ``study.variants`` (kept in order of strength); returns those added. The one way a grid gains
    points: refinement, a study read back from the store, a Dask worker's copy of the study."""
    known = {v.params.get("value") for v in study.variants}
    values = sorted({float(v) for v in values} - known)
    if not values:
        return []
    added = S.grid_variants(study, {"value": values}, only=[{"value": v} for v in values])
    study.variants = sorted(study.variants + added, key=lambda v: v.params.get("value", -1.0))
    return added
