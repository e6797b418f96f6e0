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
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import averaging as _averaging
from .. import mixup as _mixup
from .. import optim as _optim
from .. import presets as _presets
from .. import threads as _threads
from .. import tasks as _tasks
from .._validate import check_choice, check_number
from ..attach import registry
from .. import schedules as _schedules
from ..callbacks import Callback, EarlyStopping
from .. import sources as _sources
from ..training import (Data, LearningRates, accumulator, batches, check_dtype, default_lr, make_optimizer,
                        wants_integers)
from . import fused
from . import layers as L
from .functional import ModulePopulation
from .functional import module_reads
from .functional import signature as module_signature
from .merge import MergedConstraint, MergedPenalty, MergedRules


@dataclass
class ForwardMode:
    """How a population's forward runs: training (random layers draw) or evaluation, and each
    member's noise generator (training only)."""

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


def signature(model: nn.Module, reads: dict | None = None) -> tuple:
    """What must agree for members to share a population: layer types, shapes and settings (for the
    general path, with ``reads``, the settings its forward reads: see :func:`functional.module_reads`)."""
    if not _sequential(model):
        return ("module",) + module_signature(model, reads)
    out = ["sequential"]
    for m in leaves(model):
        shapes = tuple((n, tuple(p.shape)) for n, p in m.named_parameters())
        settings = type(m).__name__ if isinstance(m, L.RANDOM) else m.extra_repr()
        out.append((type(m).__name__, shapes, settings))
    return tuple(out)


def make_population(models: list[nn.Module], reads: dict | None = None):
    """The population for ``models``: the stacked-layer path (with the fused MLP kernel) for an
    nn.Sequential of the layers it runs, else the general vmap path (:class:`ModulePopulation`).
    ``REGLAB_POPULATION=general`` sends every model down the general path (the benchmarks compare
    the two on the models both run)."""
    if _sequential(models[0]) and os.environ.get("REGLAB_POPULATION", "auto") != "general":
        try:
            return Population(models)
        except ValueError:
            pass   # a setting the stacked layers do not run (e.g. batch_first=False): the general path does
    return ModulePopulation(models, reads)


def check_population(model: nn.Module, sample: torch.Tensor) -> None:
    """Raise one clear error if the population engine cannot train ``model``: builds a one-member
    population and runs a training and an evaluation forward on ``sample`` (a few input rows)."""
    pop = make_population([model])
    with torch.no_grad():
        if isinstance(pop, ModulePopulation):
            pop.forward(sample[None], ForwardMode(True, [torch.Generator().manual_seed(0)]))
            pop.forward(sample, ForwardMode(False, []), shared=True)
        else:
            pop.forward(sample[None], ForwardMode(True, [torch.Generator().manual_seed(0)]))


class Population(MergedRules):
    """P member models of one architecture, stacked. ``models`` are ``nn.Sequential`` of supported layers."""

    buffers = ()

    def __init__(self, models: list[nn.Module]):
        for m in models:
            if not isinstance(m, nn.Sequential):
                raise ValueError(f"A population needs an nn.Sequential of supported layers; got {type(m).__name__}. "
                                 "Write the model as nn.Sequential, or train it with reglab.fit.")
            if not all(p.requires_grad for p in m.parameters()):
                raise ValueError("The stacked-layer path trains every parameter; a model with frozen parameters "
                                 "(requires_grad=False) runs as a ModulePopulation.")
        self.models = models
        self.P = len(models)
        member_leaves = [leaves(m) for m in models]
        member_rules = [_rules(m) for m in models]
        self.layers = [L.make([ml[pos] for ml in member_leaves]) for pos in range(len(member_leaves[0]))]
        # The stacked parameters become consecutive views of one flat tensor, so that the optimizer
        # can update them all in one pass (Optimizer.use_flat), as ModulePopulation's are.
        self.flat, views = _optim.flat_parameters([p for layer in self.layers for p in layer.params.values()])
        views = iter(views)
        for layer in self.layers:
            layer.params = {pname: next(views) for pname in layer.params}
        self.penalties, self.constraints, self.activity = [], [], {}
        for pos, layer in enumerate(self.layers):
            mods = [ml[pos] for ml in member_leaves]
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

    def forward(self, x: torch.Tensor, ctx: ForwardMode):
        """Outputs (P, B, ...) and each member's activity penalty (P,) for inputs ``x`` of shape (P, B, ...)."""
        act = None
        for pos, layer in enumerate(self.layers):
            x = layer.forward(x, ctx)
            if pos in self.activity:
                merged, mean = self.activity[pos]
                out = x[0] if isinstance(x, tuple) else x
                value = merged.members(out)
                if value is None:   # a zero penalty (Keras's ActivityRegularization() defaults): nothing to add
                    continue
                value = torch.where(mean.to(value.device), value / out.shape[1], value)
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

    def __len__(self):
        return len(self.members)

    def evaluate(self, data, *, outputs: bool = False) -> dict:
        """Each member's loss, data loss, penalty and metric on ``data`` (as :func:`reglab.evaluate`
        gives them, in eval mode): arrays of shape (P,). Members of one architecture are evaluated
        as one population, each as its own model would be up to float32 rounding (the bound of a
        member against its standalone fit). ``outputs=True`` adds ``"outputs"``: each member's output
        for every row of ``data`` (in order; list of P tensors on the CPU)."""
        return self.evaluate_parts({"data": data}, outputs=("data",) if outputs else ())["data"]

    def evaluate_parts(self, parts: dict, outputs=()) -> dict:
        """:meth:`evaluate` on each of ``parts`` (name -> data), the populations built once for all;
        the parts named in ``outputs`` get their outputs too. Returns name -> :meth:`evaluate`'s dict."""
        groups: dict[tuple, list[int]] = {}
        for i, model in enumerate(self.models):
            groups.setdefault(signature(model), []).append(i)
        objective = _tasks.Objective(self.task, None, 0.0)
        P = len(self.models)
        out = {name: {} for name in parts}
        for idx in groups.values():
            models = [self.models[i] for i in idx]
            integers, device = wants_integers(models[0]), _sources.model_device(models[0])
            pop = make_population(models)
            for name, data in parts.items():
                part = Data(data, "data", self.task, integers, device, "evaluate")
                kept = [] if name in outputs else None
                with torch.no_grad():
                    scores = _evaluate(pop, part, None, objective, self.batch_size, ForwardMode(False, []), kept=kept)
                for key, values in scores.items():
                    out[name].setdefault(key, np.full(P, np.nan))[idx] = values
                if kept is not None:
                    stacked = torch.cat(kept, dim=1).cpu()
                    for j, i in enumerate(idx):
                        out[name].setdefault("outputs", [None] * P)[i] = stacked[j]
        return out


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
    """``X``: a few input rows."""
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
                     momentum: float = 0.0, task=None, loss=None, class_weight=None, sample_weight=None,
                     label_smoothing=0.0, clipnorm=None, clipvalue=None, global_clipnorm=None, schedule=None,
                     mixup=None, ema=None, swa=None, preset="keras", early_stopping: EarlyStopping | None = None,
                     callbacks=(), memory_budget="1GiB", chunk_size: int | None = None, progress: bool | None = None,
                     threads: int | None = None, device=None) -> PopulationResult:
    """Train ``len(configs) × len(seeds)`` members of ``build(**config)`` at once.

    ``build`` returns any ``nn.Module`` (the same definition ``reglab.fit`` trains; members of one
    architecture share a population) with reglab penalties and constraints attached; configs differ
    in penalty strengths and kinds, constraint
    bounds, dropout/noise rates. Member ``c * len(seeds) + s`` is config ``c`` with seed ``seeds[s]``
    and equals ``reglab.fit(build(**configs[c]), train, validation, seed=seeds[s], ...)`` with the same
    options (and ``preset="keras"``). ``lr``, ``label_smoothing`` and ``class_weight`` may be one value or
    one per config; ``loss``, ``sample_weight``, clipping, ``schedule``, ``mixup``, ``ema`` and ``swa`` are as
    in :func:`reglab.fit` and shared (a schedule runs per member from each member's ``lr``; each member
    draws its own mixup from its seed). ``preset=None`` keeps the weights ``build`` gives (every seed
    then starts from them; seeds still differ in shuffling and noise); ``"keras"``/``"torch"`` re-draw
    each member's initialisation from its seed.
    ``callbacks``: :class:`reglab.Callback` objects (e.g. :class:`reglab.PenaltySchedule`, or your own
    that read ``trainer.history``/``logs``), called per chunk of members with ``logs`` holding one
    value per member of the chunk (NaN once stopped); an :class:`EarlyStopping` among them acts as
    ``early_stopping``. Members that do not share an architecture
    run in separate populations; a population larger than ``memory_budget`` (or ``chunk_size``) runs
    in chunks. A member whose loss turns NaN/inf is frozen and marked diverged.

    ``train``/``validation`` as in :func:`reglab.fit`: ``(X, y)``, a map-style Dataset (each member
    draws its own shuffle order and reads its index batches, no copy per member) or a DataLoader
    (its batches, in one order shared by every member). ``device``: None trains where ``build``'s
    models are, ``"auto"`` on a GPU when there is one, or the device named; stacked weights,
    optimizer state, each member's generators, masks and batches all live there (the fused MLP
    kernel runs on the CPU only).

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
    reinit = preset is not None
    preset = _presets.get("keras" if preset is None else preset, "train_population")
    if optimizer is not None and isinstance(optimizer, str):   # before any model is built
        check_choice(optimizer, "optimizer", "train_population", tuple(_optim.OPTIMIZERS))
    batch_size = check_number(preset.batch_size if batch_size is None else batch_size, "batch_size",
                              "train_population", low=1, integer=True)
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"train_population callbacks must be reglab.Callback instances. Got {cb!r} instead.")
    stoppers = [cb for cb in callbacks if isinstance(cb, EarlyStopping)]
    if stoppers:
        if early_stopping is not None or len(stoppers) > 1:
            raise ValueError("train_population takes one EarlyStopping: pass it as early_stopping= or in callbacks.")
        early_stopping = stoppers[0]
        callbacks = [cb for cb in callbacks if cb is not early_stopping]
    _schedules.get(schedule, "train_population")   # a bad schedule fails before anything is built
    mixup = _mixup.get(mixup, "train_population")
    ema, swa = _averaging.settings(ema, swa, "train_population")
    if optimizer is not None and _optim.is_torch_optimizer(optimizer):
        _optim.check_elementwise(optimizer)
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(f"The 'early_stopping' parameter must be a reglab.EarlyStopping. Got {early_stopping!r} instead.")
    if chunk_size is not None:
        chunk_size = check_number(chunk_size, "chunk_size", "train_population", low=1, integer=True)
    budget = parse_bytes(memory_budget)
    keep_freed_memory()
    lrs = _per_config(lr, "lr", len(configs))
    smoothing = _per_config(label_smoothing, "label_smoothing", len(configs))
    class_weight = _per_config(class_weight, "class_weight", len(configs), scalar=(str, dict))

    if device is not None:   # a bad name fails before anything is built (None: where build's models are)
        _sources.resolve_device(device, None, "train_population")
    templates = []
    for i, config in enumerate(configs):
        model = build(**config)
        if not isinstance(model, nn.Module):
            raise TypeError(f"build(**{config!r}) must return an nn.Module. Got {type(model).__name__} instead.")
        check_dtype(model, f"build(**{config!r})")
        templates.append(model)
    members = [{"config_index": c, "config": configs[c], "seed": s} for c in range(len(configs)) for s in seeds]
    integers = wants_integers(templates[0])
    device = _sources.resolve_device(device, _sources.model_device(templates[0]), "train_population")
    X = Data(train, "train", task, integers, device, "train_population")
    task, Y = X.task, X.targets
    val = Data(validation, "validation", task, integers, device, "train_population") if validation is not None else None
    if val is None and early_stopping is not None and early_stopping.monitor.startswith("val_"):
        raise ValueError("EarlyStopping monitors a validation metric but train_population got no validation data; "
                         "pass validation=(X_val, y_val) or monitor='loss'.")
    weights = [_tasks.class_weights(cw, Y, task, "train_population") for cw in class_weight]
    for s_value in smoothing:
        _tasks.Objective(task, loss, s_value)   # one clear error before training
    training = dict(loss=loss, smoothing=smoothing, class_weights=weights,
                    sample_weight=X.sample_weights(sample_weight, "train_population"),
                    clipping=dict(clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm),
                    schedule=schedule, callbacks=callbacks, reinit=reinit, mixup=mixup, ema=ema, swa=swa)

    # Members share a population when their models agree in what the forward computes with;
    # attributes it never reads (e.g. ``self.l2``) may differ. Probed only when that could matter.
    reads = [None] * len(templates)
    if len({signature(t) for t in templates}) > 1:
        sample = X.sample(min(2, X.n))
        reads = [None if _sequential(t) else module_reads(t, sample) for t in templates]
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        c = m["config_index"]
        groups.setdefault(signature(templates[c], reads[c]), []).append(i)

    P = len(members)
    out = PopulationResult(members=members, history={}, epochs_run=np.zeros(P, int), stopped_epoch=np.full(P, -1),
                           best_epoch=np.full(P, -1), diverged=np.zeros(P, bool), models=[None] * P, task=task,
                           batch_size=batch_size)
    bar = tqdm(total=P * epochs, desc="population", unit="member-epoch", disable=None if progress is None else not progress,
               delay=2, leave=False)
    with _threads.restored():   # whatever the governor picks is undone afterwards
        governor = _threads.Governor.for_training(threads)
        _train_groups(groups, templates, members, lrs, X, Y, val, task, epochs, batch_size, optimizer, preset,
                      weight_decay, momentum, early_stopping, budget, chunk_size, bar, out, governor, training, reads)
    bar.close()
    return out


def _per_config(value, name, n, scalar=()):
    """One value per config from one value (a number, None, or a ``scalar`` type) or a list of n."""
    if value is None or isinstance(value, (int, float, *scalar)) or (isinstance(value, torch.Tensor) and value.dim() == 0):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"The '{name}' parameter has {len(values)} values for {n} configs; give one per config or one value.")
    return values


def _objective(task, training, config_indices):
    """The chunk's objective: per-member label smoothing and class weights from their configs."""
    smooth = [training["smoothing"][c] or 0.0 for c in config_indices]
    weights = [training["class_weights"][c] for c in config_indices]
    if all(w is None for w in weights):
        cw = None
    else:
        width = max(w.numel() for w in weights if w is not None)
        cw = torch.stack([torch.ones(width) if w is None else w for w in weights])
    smoothing = torch.tensor(smooth, dtype=torch.float64) if any(smooth) else 0.0
    return _tasks.Objective(task, training["loss"], smoothing, cw)


def _train_groups(groups, templates, members, lrs, X, Y, val, task, epochs, batch_size, optimizer, preset,
                  weight_decay, momentum, early_stopping, budget, chunk_size, bar, out, governor, training, reads):
    for idx in groups.values():
        group_reads = reads[members[idx[0]]["config_index"]]
        per_member = _member_bytes(templates[members[idx[0]]["config_index"]], X.sample(1).cpu(), batch_size)
        size = chunk_size or max(1, budget // per_member)
        for start in range(0, len(idx), size):
            chunk = idx[start:start + size]
            models = []
            for i in chunk:
                model = copy.deepcopy(templates[members[i]["config_index"]])
                if training["reinit"]:   # drawn on the CPU: the same weights on any device
                    _presets.initialize(model.cpu(), preset, members[i]["seed"])
                models.append(model.to(X.device))
            lr_chunk = [lrs[members[i]["config_index"]] for i in chunk]
            lr_value = lr_chunk[0] if len(set(lr_chunk)) == 1 else torch.tensor(
                [default_lr(optimizer, preset) if v is None else float(v) for v in lr_chunk])
            objective = _objective(task, training, [members[i]["config_index"] for i in chunk])
            result = _train_chunk(make_population(models, group_reads), [members[i]["seed"] for i in chunk], X, Y, val, objective,
                                  epochs, batch_size, optimizer, preset, lr_value, weight_decay, momentum,
                                  early_stopping, bar, governor, training, chunk)
            for j, i in enumerate(chunk):
                for key, values in result["history"].items():
                    out.history.setdefault(key, np.full((len(members), epochs), np.nan))[i] = values[j]
                for key in ("epochs_run", "stopped_epoch", "best_epoch", "diverged"):
                    getattr(out, key)[i] = result[key][j]
                out.models[i] = models[j]


class PopulationTrainer:
    """What callbacks see while a chunk of members trains: ``population``, ``members`` (their indices
    in the result), ``optimizer``, ``history`` (key -> array (members, epochs)), ``active`` (members
    still training), ``epochs``, ``penalty_scale`` (set by :class:`reglab.PenaltySchedule`) and
    ``stop_training`` (stops the whole chunk)."""

    def __init__(self, population, members, optimizer, history, epochs):
        self.population, self.members, self.optimizer, self.history = population, list(members), optimizer, history
        self.epochs = epochs
        self.active = np.ones(len(self.members), bool)
        self.penalty_scale = 1.0
        self.stop_training = False


def _train_chunk(pop: Population, seeds, X, Y, val, objective, epochs, batch_size, optimizer, preset, lr,
                 weight_decay, momentum, early_stopping, bar, governor, training, member_ids):
    """``X``: the training :class:`reglab.training.Data` (``Y`` unused: its targets come with it)."""
    train_data, device = X, X.device
    P, n = pop.P, train_data.n
    task = objective.task
    streams = [_presets.Streams.from_seed(s) for s in seeds]
    shuffle_gens = [torch.Generator().manual_seed(s.shuffle) for s in streams]   # orders: drawn on the CPU
    # noise (dropout masks, ...) is drawn where it is used, each member from its own generator
    train_ctx = ForwardMode(True, [torch.Generator(device=device).manual_seed(s.noise) for s in streams])
    eval_ctx = ForwardMode(False, [])
    opt = make_optimizer(pop.params, optimizer, preset, lr, weight_decay, momentum, training["clipping"],
                         owner="train_population")
    opt.stacked = True
    if getattr(pop, "flat", None) is not None and isinstance(opt, _optim.Optimizer):
        opt.use_flat(pop.flat)
    callbacks = training["callbacks"]
    schedule = copy.deepcopy(_schedules.get(training["schedule"]))   # its state is this chunk's
    rates = LearningRates(schedule, opt, opt.lr, P)
    mixing = _mixup.Mixing(training["mixup"], seeds, stacked=True, owner="train_population")
    averages = _averaging.Averages(training["ema"], training["swa"], pop.params, seeds, stacked=True)
    sample_weight = training["sample_weight"]
    # The fused kernel computes the task's own loss, penalties scaled by 1 and Adam without clipping.
    # A callback that acts before or during an epoch may set penalty_scale (PenaltySchedule does).
    writes = any(type(cb).on_epoch_begin is not Callback.on_epoch_begin or type(cb).on_train_begin is not
                 Callback.on_train_begin or type(cb).on_batch_end is not Callback.on_batch_end for cb in callbacks)
    plain = objective.plain and sample_weight is None and not writes and device.type == "cpu"
    fused_pop = pop.fused if plain and not (mixing.on or averages.on) else None
    # The whole step (data loss, L1/L2 penalties, Adam) runs in one compiled loop when it can.
    fused_step = (fused_pop.optimizer_plan(opt, pop.penalties)
                  if fused_pop is not None and not opt.clipping else None)
    rule = early_stopping.rule(P) if early_stopping is not None else None
    restore = early_stopping is not None and early_stopping.restore_best_weights
    state = list(pop.params) + list(pop.buffers)   # what restore_best_weights keeps (BatchNorm statistics too)
    best_params = [p.detach().clone() for p in state] if restore else None
    has_best = torch.zeros(P, dtype=torch.bool, device=device)

    active = torch.ones(P, dtype=torch.bool, device=device)
    everyone = True   # active.all(), kept on the host: no device sync or masked copy a step while it holds
    diverged = torch.zeros(P, dtype=torch.bool, device=device)
    epochs_run = np.zeros(P, int)
    stopped = np.full(P, -1)
    names = ["loss", "data_loss", "penalty", task.metric]
    history = {k: np.full((P, epochs), np.nan) for k in names}
    if val is not None:
        history.update({f"val_{k}": np.full((P, epochs), np.nan) for k in names})
    if n <= batch_size and not train_data.shared_order:   # one shared batch: never copied
        whole = train_data.take(torch.arange(n, device=device))
        Xs, Ys = whole[0].expand((P,) + whole[0].shape), whole[1].expand((P,) + whole[1].shape)
    trainer = PopulationTrainer(pop, member_ids, opt, history, epochs)
    # L1/L2 penalties (the usual ones): their gradients l1·sign(w) + l2·2w are added to the data
    # gradients directly, the numbers autograd would give, without the penalty's graph and its
    # extra passes over every weight. None: some penalty is another kind; autograd does them all.
    linear = pop.linear_penalties()
    steady = None   # their terms while every member trains with penalty scale 1

    def notify(hook, **kwargs):
        for cb in callbacks:
            getattr(cb, hook)(trainer, **kwargs)

    notify("on_train_begin")
    for epoch in range(epochs):
        if not bool(active.any()) or trainer.stop_training:
            break
        rates.epoch_begin(epoch)
        notify("on_epoch_begin", epoch=epoch)
        scale = trainer.penalty_scale
        if scale != 1.0 and fused_pop is not None:   # pragma: no cover - only a callback without hooks could
            raise ValueError("penalty_scale changed inside train_population; set it from a callback's on_epoch_begin.")
        order = (torch.stack([torch.randperm(n, generator=g) for g in shuffle_gens]).to(device)
                 if n > batch_size and not train_data.shared_order else None)
        sums = torch.zeros(4, P, dtype=torch.float64, device=accumulator(device))
        for b, (idx, size, xb, yb) in enumerate(_member_batches(train_data, batch_size, order, P)):
            if order is None and not train_data.shared_order:
                xb, yb = Xs, Ys
                wb = None if sample_weight is None else sample_weight.expand(P, n)
            elif order is None:   # a DataLoader's batch, shared by every member
                xb, yb = xb.expand((P,) + xb.shape), yb.expand((P,) + yb.shape)
                wb = None
            else:
                wb = None if sample_weight is None else sample_weight[order[:, idx]]
            xb, mix = mixing(xb)
            if fused_step is not None:
                rates.before_step()
                data, metric, pen = fused_pop.train_step(xb, yb, task, opt, fused_step, active)
                loss = data + pen
                finite = _finite_unless_all(loss, active, everyone)
                if finite is not None:
                    diverged |= active & ~finite
                    active &= finite
                    everyone = False
                pop.apply_constraints(active)
                sums += torch.stack([loss, data, pen, metric]).to(sums.device).double() * size
                if not everyone and not bool(active.any()):
                    break
                continue
            if fused_pop is not None:
                data, metric, act, grads = fused_pop.run(xb, yb, task, grad=True)
                pen = pop.weight_penalty() + act
            else:
                # A stopped member's buffers (BatchNorm statistics) stay as they were when it stopped.
                frozen = ([b.clone() for b in pop.buffers], active.clone()) if pop.buffers and not everyone else None
                out, act = pop.forward(xb, train_ctx)
                data = mix.sample_loss(objective, out, yb, wb).mean(-1)
                with torch.set_grad_enabled(linear is None):   # L1/L2 gradients are added by hand below
                    wp = pop.weight_penalty()
                pen = wp + act if scale == 1.0 else wp * scale + act * scale
            loss = data + pen
            finite = _finite_unless_all(loss, active, everyone)
            if finite is not None:
                diverged |= active & ~finite
                active &= finite
                everyone = False
                if not bool(active.any()):
                    _unfreeze(pop, frozen)
                    break
            penalties = None
            if fused_pop is None:
                grads = _grads((loss if everyone else torch.where(active, loss, 0)).sum(), pop.params)
                if linear:   # their gradients: added by the optimizer (in its own pass where it can)
                    # The same terms every step while all members train at scale 1: made once then.
                    steady_now = everyone and scale == 1.0
                    if steady_now and steady is not None:
                        penalties = steady
                    else:
                        upstream = active.to(pop.params[0].dtype)   # what autograd sends each member's penalty
                        penalties = pop.penalty_terms(pop.params, linear, upstream if scale == 1.0 else upstream * scale)
                        steady = penalties if steady_now else None
                metric = mix.sample_metric(task, out, yb).mean(-1)
            elif pen.requires_grad:
                extra = _grads(torch.where(active, pen, 0).sum(), pop.params)
                grads = [g if e is None else g + e for g, e in zip(grads, extra)]
            if fused_pop is None:
                _unfreeze(pop, frozen)   # after backward, which may read the buffers
            rates.before_step()
            opt.step(grads, active=None if everyone else active, penalties=penalties)
            averages.after_step(active)
            pop.apply_constraints(active)
            sums += torch.stack([loss.detach(), data.detach(), pen.detach(), metric]).to(sums.device).double() * size
            notify("on_batch_end", batch=b)
        averages.epoch_end(epoch, active)
        running = active.cpu().numpy().copy()
        logs = (sums / n).cpu().numpy()
        for k, key in enumerate(names):
            history[key][running, epoch] = logs[k][running]
        if val is not None:
            with torch.no_grad():
                vlogs = _evaluate(pop, val, None, objective, batch_size, eval_ctx, fused_pop, scale)
            for key, values in vlogs.items():
                history[f"val_{key}"][running, epoch] = values[running]
        epochs_run[running] += 1
        bar.update(int(running.sum()))
        governor.tick(int(running.sum()))
        epoch_logs = {key: values[:, epoch] for key, values in history.items()}
        rates.epoch_end(epoch, epoch_logs, running)
        if rule is not None:
            monitor = early_stopping.monitor
            if monitor not in history:
                raise ValueError(f"EarlyStopping monitors {monitor!r}, which this run does not log; logged: {', '.join(history)}.")
            improved, stop, first = rule.update(epoch, history[monitor][:, epoch], running)
            if restore:
                take = torch.from_numpy(improved | (first & ~has_best.cpu().numpy())).to(device)
                if bool(take.any()):
                    for b, p in zip(best_params, state):
                        b.copy_(torch.where(take.view((-1,) + (1,) * (p.dim() - 1)), p.detach(), b))
                    has_best |= take
            stop_t = torch.from_numpy(stop).to(device)
            stopped[stop] = epoch
            active &= ~stop_t
            everyone = everyone and not stop.any()
        trainer.active = active.cpu().numpy().copy()
        notify("on_epoch_end", epoch=epoch, logs=epoch_logs)
    averages.finish_population(pop, (xb for _, _, xb, _ in train_data.epoch(batch_size, None)),
                               lambda x, generators: pop.forward(x, ForwardMode(True, generators)))
    if isinstance(pop, ModulePopulation):
        pop.settle()   # draws made ahead for a batch that never came
    notify("on_train_end")
    with torch.no_grad():
        if restore and bool(has_best.any()):
            for b, p in zip(best_params, state):
                p.copy_(torch.where(has_best.view((-1,) + (1,) * (p.dim() - 1)), b, p))
    pop.write_back()
    best = np.where(has_best.cpu().numpy(), rule.best_epoch, -1) if restore else np.full(P, -1)
    return {"history": history, "epochs_run": epochs_run, "stopped_epoch": stopped, "best_epoch": best,
            "diverged": diverged.cpu().numpy()}


def _grads(total: torch.Tensor, params: list) -> list:
    """The gradient of ``total`` for each stacked parameter: None where it is unused, and for a frozen
    one (``requires_grad=False`` in the members): the optimizer then leaves it, as in reglab.fit."""
    trainable = [p for p in params if p.requires_grad]
    grads = iter(torch.autograd.grad(total, trainable, allow_unused=True))
    return [next(grads) if p.requires_grad else None for p in params]


def _all_finite(loss: torch.Tensor) -> bool:
    """Whether every member's loss is finite: their sum is (two ops and one sync a step, against six
    for ``isfinite(loss).all()``), or, where the sum overflows, each of them is."""
    return math.isfinite(float(loss.detach().sum())) or bool(torch.isfinite(loss).all())


def _finite_unless_all(loss: torch.Tensor, active: torch.Tensor, everyone: bool) -> torch.Tensor | None:
    """None when every training member's loss is finite (``everyone``: all members train), else the
    mask of the finite losses."""
    if everyone and _all_finite(loss):
        return None
    finite = torch.isfinite(loss)
    return None if bool((finite if everyone else finite[active]).all()) else finite


def _member_batches(data, batch_size, order, P):
    """``(idx, size, x, y)`` per batch of an epoch: each member's rows ``order[:, idx]`` (x, y of shape
    (P, B, ...)), the loader's shared batches ((B, ...)), or the whole set once (x, y None)."""
    if data.shared_order:
        yield from data.epoch(batch_size, None)
        return
    for idx, size in batches(data.n, batch_size, None):
        if order is None:
            yield idx, size, None, None
        else:
            yield idx, size, *data.take(order[:, idx])


@torch.no_grad()
def _unfreeze(pop, frozen) -> None:
    """Put back the buffers of the members that had stopped before this step's forward."""
    if frozen is None:
        return
    saved, was_active = frozen
    for b, old in zip(pop.buffers, saved):
        b.copy_(torch.where(was_active.view((-1,) + (1,) * (b.dim() - 1)), b, old))


def _evaluate(pop: Population, X, Y, objective, batch_size, ctx, fused_pop=None, scale=1.0, kept=None) -> dict:
    """``X``: the validation :class:`reglab.training.Data` (``Y`` unused). ``kept``: a list that gets
    each batch's stacked outputs (members first)."""
    task = objective.task
    acc = accumulator(X.device)
    data_sum = torch.zeros(pop.P, dtype=torch.float64, device=acc)
    metric_sum = torch.zeros_like(data_sum)
    act_sum = torch.zeros_like(data_sum)
    n = 0
    for size, xb, yb in X.in_order(batch_size):
        n += size
        if fused_pop is not None:
            data, metric, act, _ = fused_pop.run(xb, yb, task, grad=False)
            data_sum += data.double() * size
            metric_sum += metric.double() * size
            act_sum += act.double() * size
            continue
        if isinstance(pop, ModulePopulation):
            out, act = pop.forward(xb, ctx, shared=True)
        else:
            out, act = pop.forward(xb.expand((pop.P,) + xb.shape), ctx)
        if kept is not None:
            kept.append(out.detach())
        data_sum += objective.sample_loss(out, yb, weighted=False, stacked=True).sum(-1).to(acc).double()
        metric_sum += task.sample_metric(out, yb).sum(-1).to(acc).double()
        act_sum += (act * scale if scale != 1.0 else act).to(acc).double() * size
    wp = pop.weight_penalty().to(acc)
    pen = (wp * scale if scale != 1.0 else wp).double() + act_sum / n
    return {"loss": (data_sum / n + pen).cpu().numpy(), "data_loss": (data_sum / n).cpu().numpy(),
            "penalty": pen.cpu().numpy(), task.metric: (metric_sum / n).cpu().numpy()}
