"""Train a whole grid × seeds as one vectorised population.

Parameters are stacked with a leading member dimension and the members' losses are summed: the
gradient of the sum with respect to member i's parameters is exactly member i's own gradient,
and Keras's optimizers are element-wise, so one optimizer over the stacked tensors is P
independent optimizers. Nothing couples members: each owns its streams (initialisation, shuffle
order, dropout masks, noise) derived from its seed exactly as ``reglab.fit`` derives them, so
member i ends where the standalone fit with the same seed and configuration ends.
"""

from __future__ import annotations

import copy
import ctypes
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import optim as _optim
from .. import presets as _presets
from .. import threads as _threads
from .. import tasks as _tasks
from .._validate import check_number
from ..attach import registry
from ..callbacks import EarlyStopping, StoppingRule
from ..training import as_tensors, batches, evaluate, make_optimizer, wants_integers
from . import fused
from . import layers as L
from .functional import ModulePopulation, NotBatchable
from .functional import signature as module_signature
from .merge import MergedConstraint, MergedPenalty, MergedRules


@dataclass
class Context:
    training: bool
    noise_generators: list


def leaves(model: nn.Module) -> list[nn.Module]:
    """The modules a Sequential (possibly nested) runs, in order."""
    if isinstance(model, nn.Sequential):
        return [leaf for child in model for leaf in leaves(child)]
    return [model]


def _rules(model: nn.Module):
    """Penalties and constraints per leaf module, including those attached to containers by dotted name."""
    found = {id(m): ({}, {}) for m in leaves(model)}
    for prefix, module in model.named_modules():
        reg = registry(module)
        if reg is None:
            continue
        if id(module) not in found and reg.activity is not None:
            raise ValueError(f"An activity penalty on the container {prefix or 'model'!r} is not supported in a "
                             "population; attach it to a layer.")
        for table, slot in ((reg.penalties, 0), (reg.constraints, 1)):
            for name, rule in table.items():
                owner_name, _, pname = name.rpartition(".")
                owner = module.get_submodule(owner_name) if owner_name else module
                if id(owner) not in found:
                    raise ValueError(f"A rule on parameter {prefix + '.' + name if prefix else name!r} is not on a layer "
                                     "the population can run.")
                found[id(owner)][slot][pname] = rule
    return found


def _sequential(model: nn.Module) -> bool:
    """Whether ``model`` is an nn.Sequential of the layers the stacked-layer path runs."""
    return isinstance(model, nn.Sequential) and all(isinstance(m, L.SUPPORTED) for m in leaves(model))


def signature(model: nn.Module) -> tuple:
    """What must agree for members to share a population: layer types, shapes and settings."""
    if not _sequential(model):
        return ("module",) + module_signature(model)
    out = ["sequential"]
    for m in leaves(model):
        shapes = tuple((n, tuple(p.shape)) for n, p in m.named_parameters())
        settings = type(m).__name__ if isinstance(m, L.RANDOM) else m.extra_repr()
        out.append((type(m).__name__, shapes, settings))
    return tuple(out)


def make_population(models: list[nn.Module]):
    """The population for ``models``: the stacked-layer path (with the fused MLP kernel) for an
    nn.Sequential of the layers it runs, else the general vmap path (:class:`ModulePopulation`).
    ``REGLAB_POPULATION=general`` sends every model down the general path (the benchmarks compare
    the two on the models both run)."""
    if _sequential(models[0]) and os.environ.get("REGLAB_POPULATION", "auto") != "general":
        try:
            return Population(models)
        except ValueError:
            pass   # a setting the stacked layers do not run (e.g. batch_first=False): the general path does
    return ModulePopulation(models)


def check_population(model: nn.Module, sample: torch.Tensor) -> None:
    """Raise one clear error if the population engine cannot train ``model``: builds a one-member
    population and runs a training and an evaluation forward on ``sample`` (a few input rows)."""
    pop = make_population([model])
    with torch.no_grad():
        if isinstance(pop, ModulePopulation):
            pop.forward(sample[None], Context(True, [torch.Generator().manual_seed(0)]))
            pop.forward(sample, Context(False, []), shared=True)
        else:
            pop.forward(sample[None], Context(True, [torch.Generator().manual_seed(0)]))


class Population(MergedRules):
    """P member models of one architecture, stacked. ``models`` are ``nn.Sequential`` of supported layers."""

    buffers = ()

    def __init__(self, models: list[nn.Module]):
        for m in models:
            if not isinstance(m, nn.Sequential):
                raise ValueError(f"A population needs an nn.Sequential of supported layers; got {type(m).__name__}. "
                                 "Write the model as nn.Sequential, or train it with reglab.fit.")
        self.models = models
        self.P = len(models)
        member_leaves = [leaves(m) for m in models]
        member_rules = [_rules(m) for m in models]
        self.layers, self.penalties, self.constraints, self.activity = [], [], [], {}
        for pos in range(len(member_leaves[0])):
            mods = [ml[pos] for ml in member_leaves]
            layer = L.make(mods)
            self.layers.append(layer)
            for pname in layer.params:
                pens = MergedPenalty([rules[id(m)][0].get(pname) for rules, m in zip(member_rules, mods)])
                if pens:
                    self.penalties.append((layer.params[pname], pens))
                cons = MergedConstraint([rules[id(m)][1].get(pname) for rules, m in zip(member_rules, mods)])
                if cons:
                    self.constraints.append((layer.params[pname], cons))
            regs = [registry(m) for m in mods]
            acts = [r.activity if r is not None else None for r in regs]
            if any(a is not None for a in acts):
                mean = torch.tensor([r is None or r.activity_convention == "mean" for r in regs])
                self.activity[pos] = (MergedPenalty(acts), mean)
        self.params = [p for layer in self.layers for p in layer.params.values()]
        act = fused.plan(self.layers)
        activity = fused.activity_plan(self.activity) if act is not None else None
        self.fused = fused.FusedMLP(self.layers, act, activity) if activity is not None else None

    def forward(self, x: torch.Tensor, ctx: Context):
        """Outputs (P, B, ...) and each member's activity penalty (P,) for inputs ``x`` of shape (P, B, ...)."""
        act = None
        for pos, layer in enumerate(self.layers):
            x = layer.forward(x, ctx)
            if pos in self.activity:
                merged, mean = self.activity[pos]
                out = x[0] if isinstance(x, tuple) else x
                value = merged.members(out)
                value = torch.where(mean, value / out.shape[1], value)
                act = value if act is None else act + value
        if act is None:
            act = x.new_zeros(self.P) if not isinstance(x, tuple) else x[0].new_zeros(self.P)
        return x, act

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy each member's stacked weights into its own model."""
        for i, model in enumerate(self.models):
            for layer, module in zip(self.layers, leaves(model)):
                for name, stacked in layer.params.items():
                    module.get_parameter(name).copy_(stacked[i])
            model.eval()


@dataclass
class PopulationResult:
    """Per-member outcome of :func:`train_population`; member i is ``members[i]``."""

    members: list                 # {"config_index", "config", "seed"} per member
    history: dict                 # key -> array (P, epochs), NaN after a member stopped
    epochs_run: np.ndarray        # epochs each member completed
    stopped_epoch: np.ndarray     # epoch early stopping ended the member, -1 if it did not
    best_epoch: np.ndarray        # epoch whose weights were restored, -1 if none
    diverged: np.ndarray          # loss became NaN/inf: frozen before that step
    models: list                  # each member's nn.Module with its final weights (eval mode)
    task: object = None
    batch_size: int = 32
    timings: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.members)

    def evaluate(self, data) -> dict:
        """Each member's loss, data loss, penalty and metric on ``data``: arrays of shape (P,)."""
        rows = [evaluate(m, data, task=self.task, batch_size=self.batch_size) for m in self.models]
        return {k: np.array([r[k] for r in rows]) for k in rows[0]}


_heap_kept = False


def keep_freed_memory() -> None:
    """Stop glibc from returning each step's freed activations to the OS (Linux/glibc only; once).

    A population's activations are tensors of a few MiB. glibc serves blocks that large by mmap,
    or trims them off the top of the heap when freed, so every training step page-faults its
    activations in again, zero-filled by the kernel: about 1000 faults per step and 15-30 % of the
    wall time of the digits CNN and LSTM benchmarks. Fixed mmap and trim thresholds (32 MiB and
    128 MiB) keep the freed memory for the next step. Skipped where the MALLOC_MMAP_THRESHOLD_ or
    MALLOC_TRIM_THRESHOLD_ environment variables already choose.
    """
    global _heap_kept
    if _heap_kept or not sys.platform.startswith("linux"):
        return
    _heap_kept = True
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):   # pragma: no cover - not glibc (musl, ...)
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 128 << 20)


def _as_list(configs):
    if configs is None:
        return [{}]
    configs = list(configs)
    if not configs:
        raise ValueError("The 'configs' parameter of train_population is empty; give at least one dict (or None).")
    for c in configs:
        if not isinstance(c, dict):
            raise TypeError(f"Each config of train_population must be a dict of build() arguments. Got {c!r} instead.")
    return configs


def _member_bytes(model, X, batch_size):
    """Rough bytes one member needs: activations kept for backward, gradients, optimizer state."""
    numel = [0]

    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        numel[0] += out[0].numel() if out.dim() > 0 else 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(X[:1])
            model.train(was)
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return 4 * (numel[0] * batch_size * 4 + params * 6 + X[0].numel() * batch_size)


def parse_bytes(value) -> int:
    """A positive number of bytes from ``1073741824``, ``"1GiB"``, ``"512MB"`` or ``"100k"``."""
    message = f"The 'memory_budget' parameter must be a positive size like '1GiB' or a number of bytes. Got {value!r} instead."
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
        text = str(value).strip().lower().removesuffix("ib").removesuffix("b")
        try:
            number = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
        except ValueError:
            raise ValueError(message) from None
    if not math.isfinite(number) or number < 1:
        raise ValueError(message)
    return int(number)


def train_population(build, configs=None, seeds=(0,), *, train, validation=None, epochs: int,
                     batch_size: int | None = None, optimizer=None, lr=None, weight_decay=None,
                     momentum: float = 0.0, task=None, preset="keras", early_stopping: EarlyStopping | None = None,
                     memory_budget="1GiB", chunk_size: int | None = None, progress: bool | None = None,
                     threads: int | None = None) -> PopulationResult:
    """Train ``len(configs) × len(seeds)`` members of ``build(**config)`` at once.

    ``build`` returns an ``nn.Sequential`` (the same definition ``reglab.fit`` trains) with reglab
    penalties and constraints attached; configs differ in penalty strengths and kinds, constraint
    bounds, dropout/noise rates. Member ``c * len(seeds) + s`` is config ``c`` with seed ``seeds[s]``
    and equals ``reglab.fit(build(**configs[c]), train, validation, seed=seeds[s], ...)`` with the same
    options. ``lr`` may be one float or one value per config. Members that do not share an architecture
    run in separate populations; a population larger than ``memory_budget`` (or ``chunk_size``) runs
    in chunks. A member whose loss turns NaN/inf is frozen and marked diverged.

    ``threads``: None (default) follows ``REGLAB_THREADS``, else lets a :class:`reglab.threads.Governor`
    choose: every usable CPU on a quiet machine, and when other processes share the CPU whichever of
    that and the CPUs they leave trains faster; an int pins that many threads. Results do not
    depend on it.
    """
    configs = _as_list(configs)
    if threads is not None:
        threads = check_number(threads, "threads", "train_population", low=1, integer=True)
    seeds = [check_number(s, "seed", "train_population", low=0, integer=True) for s in seeds]
    if not seeds:
        raise ValueError("The 'seeds' parameter of train_population is empty; give at least one seed.")
    epochs = check_number(epochs, "epochs", "train_population", low=1, integer=True)
    preset = _presets.get(preset)
    batch_size = check_number(preset.batch_size if batch_size is None else batch_size, "batch_size",
                              "train_population", low=1, integer=True)
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(f"The 'early_stopping' parameter must be a reglab.EarlyStopping. Got {early_stopping!r} instead.")
    if chunk_size is not None:
        chunk_size = check_number(chunk_size, "chunk_size", "train_population", low=1, integer=True)
    budget = parse_bytes(memory_budget)
    keep_freed_memory()
    if lr is None or isinstance(lr, (int, float)):
        lrs = [lr] * len(configs)
    else:
        lrs = list(lr)
        if len(lrs) != len(configs):
            raise ValueError(f"The 'lr' parameter has {len(lrs)} values for {len(configs)} configs; give one per config or one float.")

    templates = []
    for i, config in enumerate(configs):
        model = build(**config)
        if not isinstance(model, nn.Module):
            raise TypeError(f"build(**{config!r}) must return an nn.Module. Got {type(model).__name__} instead.")
        templates.append(model)
    members = [{"config_index": c, "config": configs[c], "seed": s} for c in range(len(configs)) for s in seeds]
    integers = wants_integers(templates[0])
    X, Y, task = as_tensors(train, "train", task, integers)
    val = as_tensors(validation, "validation", task, integers)[:2] if validation is not None else None
    if val is None and early_stopping is not None and early_stopping.monitor.startswith("val_"):
        raise ValueError("EarlyStopping monitors a validation metric but train_population got no validation data; "
                         "pass validation=(X_val, y_val) or monitor='loss'.")

    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        groups.setdefault(signature(templates[m["config_index"]]), []).append(i)

    P = len(members)
    out = PopulationResult(members=members, history={}, epochs_run=np.zeros(P, int), stopped_epoch=np.full(P, -1),
                           best_epoch=np.full(P, -1), diverged=np.zeros(P, bool), models=[None] * P, task=task,
                           batch_size=batch_size)
    bar = tqdm(total=P * epochs, desc="population", unit="member-epoch", disable=None if progress is None else not progress,
               delay=2, leave=False)
    with _threads.restored():   # whatever the governor picks is undone afterwards
        governor = _threads.Governor.for_training(threads)
        _train_groups(groups, templates, members, lrs, X, Y, val, task, epochs, batch_size, optimizer, preset,
                      weight_decay, momentum, early_stopping, budget, chunk_size, bar, out, governor)
    bar.close()
    return out


def _train_groups(groups, templates, members, lrs, X, Y, val, task, epochs, batch_size, optimizer, preset,
                  weight_decay, momentum, early_stopping, budget, chunk_size, bar, out, governor):
    for idx in groups.values():
        per_member = _member_bytes(templates[members[idx[0]]["config_index"]], X, batch_size)
        size = chunk_size or max(1, budget // per_member)
        for start in range(0, len(idx), size):
            chunk = idx[start:start + size]
            models = []
            for i in chunk:
                model = copy.deepcopy(templates[members[i]["config_index"]])
                _presets.initialize(model, preset, members[i]["seed"])
                models.append(model)
            lr_chunk = [lrs[members[i]["config_index"]] for i in chunk]
            lr_value = lr_chunk[0] if len(set(lr_chunk)) == 1 else torch.tensor(
                [preset.lr if v is None else float(v) for v in lr_chunk])
            result = _train_chunk(make_population(models), [members[i]["seed"] for i in chunk], X, Y, val, task,
                                  epochs, batch_size, optimizer, preset, lr_value, weight_decay, momentum,
                                  early_stopping, bar, governor)
            for j, i in enumerate(chunk):
                for key, values in result["history"].items():
                    out.history.setdefault(key, np.full((len(members), epochs), np.nan))[i] = values[j]
                for key in ("epochs_run", "stopped_epoch", "best_epoch", "diverged"):
                    getattr(out, key)[i] = result[key][j]
                out.models[i] = models[j]


def _train_chunk(pop: Population, seeds, X, Y, val, task, epochs, batch_size, optimizer, preset, lr,
                 weight_decay, momentum, early_stopping, bar, governor):
    P, n = pop.P, X.shape[0]
    streams = [_presets.Streams.from_seed(s) for s in seeds]
    shuffle_gens = [torch.Generator().manual_seed(s.shuffle) for s in streams]
    train_ctx = Context(True, [torch.Generator().manual_seed(s.noise) for s in streams])
    eval_ctx = Context(False, [])
    opt = make_optimizer(pop.params, optimizer, preset, lr, weight_decay, momentum)
    if getattr(pop, "flat", None) is not None and isinstance(opt, _optim.Optimizer):
        opt.use_flat(pop.flat)
    # The whole step (data loss, L1/L2 penalties, Adam) runs in one compiled loop when it can.
    fused_step = pop.fused.optimizer_plan(opt, pop.penalties) if pop.fused is not None else None
    rule = early_stopping.rule(P) if early_stopping is not None else None
    restore = early_stopping is not None and early_stopping.restore_best_weights
    state = list(pop.params) + list(pop.buffers)   # what restore_best_weights keeps (BatchNorm statistics too)
    best_params = [p.detach().clone() for p in state] if restore else None
    has_best = torch.zeros(P, dtype=torch.bool)

    active = torch.ones(P, dtype=torch.bool)
    diverged = torch.zeros(P, dtype=torch.bool)
    epochs_run = np.zeros(P, int)
    stopped = np.full(P, -1)
    names = ["loss", "data_loss", "penalty", task.metric]
    history = {k: np.full((P, epochs), np.nan) for k in names}
    if val is not None:
        history.update({f"val_{k}": np.full((P, epochs), np.nan) for k in names})
    Xs = X.expand((P,) + X.shape) if n <= batch_size else None   # one shared batch: never copied
    Ys = Y.expand((P,) + Y.shape) if n <= batch_size else None

    for epoch in range(epochs):
        if not bool(active.any()):
            break
        order = torch.stack([torch.randperm(n, generator=g) for g in shuffle_gens]) if n > batch_size else None
        sums = torch.zeros(4, P, dtype=torch.float64)
        for idx, size in batches(n, batch_size, None):
            if order is None:
                xb, yb = Xs, Ys
            else:
                rows = order[:, idx]
                xb, yb = X[rows], Y[rows]
            if fused_step is not None:
                data, metric, pen = pop.fused.train_step(xb, yb, task, opt, fused_step, active)
                loss = data + pen
                finite = torch.isfinite(loss)
                if not bool(finite[active].all()):
                    diverged |= active & ~finite
                    active &= finite
                pop.apply_constraints(active)
                sums += torch.stack([loss, data, pen, metric]).double() * size
                if not bool(active.any()):
                    break
                continue
            if pop.fused is not None:
                data, metric, act, grads = pop.fused.run(xb, yb, task, grad=True)
                pen = pop.weight_penalty() + act
            else:
                # A stopped member's buffers (BatchNorm statistics) stay as they were when it stopped.
                frozen = ([b.clone() for b in pop.buffers], active.clone()) if pop.buffers and not bool(active.all()) else None
                out, act = pop.forward(xb, train_ctx)
                data = task.sample_loss(out, yb).mean(-1)
                pen = pop.weight_penalty() + act
            loss = data + pen
            finite = torch.isfinite(loss)
            if not bool(finite[active].all()):
                diverged |= active & ~finite
                active &= finite
                if not bool(active.any()):
                    _unfreeze(pop, frozen)
                    break
            if pop.fused is None:
                grads = torch.autograd.grad(torch.where(active, loss, 0).sum(), pop.params, allow_unused=True)
                metric = task.sample_metric(out, yb).mean(-1)
            elif pen.requires_grad:
                extra = torch.autograd.grad(torch.where(active, pen, 0).sum(), pop.params, allow_unused=True)
                grads = [g if e is None else g + e for g, e in zip(grads, extra)]
            if pop.fused is None:
                _unfreeze(pop, frozen)   # after backward, which may read the buffers
            opt.step(grads, active=None if bool(active.all()) else active)
            pop.apply_constraints(active)
            sums += torch.stack([loss.detach(), data.detach(), pen.detach(), metric]).double() * size
        running = active.numpy().copy()
        logs = (sums / n).numpy()
        for k, key in enumerate(names):
            history[key][running, epoch] = logs[k][running]
        if val is not None:
            with torch.no_grad():
                vlogs = _evaluate(pop, val[0], val[1], task, batch_size, eval_ctx)
            for key, values in vlogs.items():
                history[f"val_{key}"][running, epoch] = values[running]
        epochs_run[running] += 1
        bar.update(int(running.sum()))
        governor.tick(int(running.sum()))
        if rule is not None:
            monitor = early_stopping.monitor
            if monitor not in history:
                raise ValueError(f"EarlyStopping monitors {monitor!r}, which this run does not log; logged: {', '.join(history)}.")
            improved, stop, first = rule.update(epoch, history[monitor][:, epoch], running)
            if restore:
                take = torch.from_numpy(improved | (first & ~has_best.numpy()))
                if bool(take.any()):
                    for b, p in zip(best_params, state):
                        b.copy_(torch.where(take.view((-1,) + (1,) * (p.dim() - 1)), p.detach(), b))
                    has_best |= take
            stop_t = torch.from_numpy(stop)
            stopped[stop] = epoch
            active &= ~stop_t
    with torch.no_grad():
        if restore and bool(has_best.any()):
            for b, p in zip(best_params, state):
                p.copy_(torch.where(has_best.view((-1,) + (1,) * (p.dim() - 1)), b, p))
    pop.write_back()
    best = np.where(has_best.numpy(), rule.best_epoch, -1) if restore else np.full(P, -1)
    return {"history": history, "epochs_run": epochs_run, "stopped_epoch": stopped, "best_epoch": best,
            "diverged": diverged.numpy()}


@torch.no_grad()
def _unfreeze(pop, frozen) -> None:
    """Put back the buffers of the members that had stopped before this step's forward."""
    if frozen is None:
        return
    saved, was_active = frozen
    for b, old in zip(pop.buffers, saved):
        b.copy_(torch.where(was_active.view((-1,) + (1,) * (b.dim() - 1)), b, old))


def _evaluate(pop: Population, X, Y, task, batch_size, ctx) -> dict:
    n = X.shape[0]
    data_sum = torch.zeros(pop.P, dtype=torch.float64)
    metric_sum = torch.zeros_like(data_sum)
    act_sum = torch.zeros_like(data_sum)
    for idx, size in batches(n, batch_size, None):
        if pop.fused is not None:
            data, metric, act, _ = pop.fused.run(X[idx], Y[idx], task, grad=False)
            data_sum += data.double() * size
            metric_sum += metric.double() * size
            act_sum += act.double() * size
            continue
        if isinstance(pop, ModulePopulation):
            out, act = pop.forward(X[idx], ctx, shared=True)
        else:
            out, act = pop.forward(X[idx].expand((pop.P,) + X[idx].shape), ctx)
        data_sum += task.sample_loss(out, Y[idx]).sum(-1).double()
        metric_sum += task.sample_metric(out, Y[idx]).sum(-1).double()
        act_sum += act.double() * size
    pen = pop.weight_penalty().double() + act_sum / n
    return {"loss": (data_sum / n + pen).numpy(), "data_loss": (data_sum / n).numpy(),
            "penalty": pen.numpy(), task.metric: (metric_sum / n).numpy()}
