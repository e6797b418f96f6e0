"""reglab benchmarks: each target measured against its peers, in one process run, on one machine.

    python benchmarks/run.py            # full mode (make bench)
    python benchmarks/run.py --quick    # CI-sized (make bench-quick), about two minutes

Writes ``benchmarks/results.json`` (machine, versions, every measurement) and
``benchmarks/results.md`` (the tables the README includes), and prints the tables.

Cases
-----
seed_mlp       the seeds' study: moons (30 training rows), 2-500-1 ReLU MLP, L2 on the hidden kernel,
               Adam, batch 32, 6 λ × 30 seeds = 180 members. reglab.train_population against
               scikit-learn's MLPClassifier and a hand-written PyTorch loop, one model at a time.
digits_cnn     load_digits as 1×8×8 images, Conv2d(16,3×3)-ReLU-MaxPool-Flatten-Dropout-Linear(64)-ReLU-
               Linear(10), 3 (L2, dropout) configs × seeds; population against a PyTorch loop.
sequence_lstm  load_digits as 8 steps × 8 features, LSTM(32)-last step-Linear(10), 3 L2 configs × seeds;
               population against a PyTorch loop with nn.LSTM.
tabular_mlp    any nn.Module (issue 12; models and peers in benchmarks/models.py): make_classification(6000, 8),
               MLP 8-256-256-1 (ReLU), binary, L2 on the hidden kernels, 2 L2 × 5 seeds; reglab.train_population
               against the PyTorch loop (one member after another) and a torch.func ensemble (stack_module_state +
               vmap(functional_call), one stacked Adam). Targets: ≥ 4× the loop, ≥ 2× torch.func.
residual_mlp   the same data, a residual MLP with BatchNorm1d and Dropout in a custom forward(), members differing
               in dropout rate and L2 (torch.func: one ensemble per dropout rate). ≥ 3× the loop, ≥ 1.5× torch.func.
transformer    token sequences (vocab 50, length 16, is the 7 before the 9), Embedding + learned positions + a 2-layer
               TransformerEncoder (d_model 32, 4 heads, dropout 0.1) + mean + Linear; 2 L2 × 5 seeds. ≥ 3× the loop,
               ≥ 1.5× torch.func.
module_scaling residual_mlp and transformer as the population grows (1 → 20 members, one config): reglab, torch.func
               and the loop's rate at each size; target: reglab never slower than the loop.
scaling        model-epochs/s of the seed-MLP population as members grow 1 → 1000 and as training rows
               grow 30 → 10,000, with the PyTorch loop (one model) for reference.
memory         peak RSS of a 1000-member seed-MLP population, measured in a fresh subprocess.
contention     the seed-MLP population (180 members) on a quiet machine and with one and two competing
               busy processes (pure-Python loops, started and stopped here), with reglab's default
               thread policy, pinned to one thread, and pinned to every CPU (the old default); medians
               of interleaved runs. Targets: with one competitor ≥ 0.5× the quiet rate, and never below
               one thread in the same conditions.

Every rate is model-epochs per second: (models trained) × (epochs each) / wall seconds, timed
with time.perf_counter around the whole training call (model construction included). Peers do the
same work: same data, architecture, batch size, epochs and Adam; the one-model-at-a-time peers are
timed on a subset of the members and their rate extrapolated, since a model-epoch costs the same
whichever member it belongs to. Each implementation is warmed up before it is timed; reglab's first
call (numba compiles or loads its kernels) is reported separately as the first-call overhead. Short
timings are repeated (``repeat`` in SIZES, or --repeat) and the fastest run counts; all runs are in
results.json. The any-model cases and module_scaling interleave their implementations round by round
(reglab, the loop, torch.func, then again), so that a machine whose speed drifts during a case slows
each of them alike instead of whichever ran in the slow minute. Timings are only as good as the machine is quiet: the load average at the start and
end is recorded, and --threads pins torch's and numba's thread counts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

# As `import reglab` does before PyTorch loads: OpenMP threads sleep at barriers instead of spinning
# (this script imports torch first; without it a busy machine slows the PyTorch loop many-fold).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import sklearn
import torch
from sklearn.datasets import load_digits, make_moons
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from torch import nn

import reglab

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import models  # noqa: E402  (benchmarks/models.py: the any-model cases' models, data and peers)

LAMBDAS = [10.0 ** -k for k in range(1, 7)]   # 1e-1 … 1e-6
BATCH = 32
STUDY_MODELS, STUDY_EPOCHS = 180, 4000        # the seeds' full protocol: 720,000 model-epochs

# Sizes per mode. Peers that train one model at a time run on a subset of the members.
SIZES = {
    "full": {
        "seed_mlp": dict(seeds=30, epochs=STUDY_EPOCHS, peer_models=12, peer_epochs=1000, warm_epochs=2, repeat=1),
        "digits_cnn": dict(seeds=10, configs=3, epochs=20, peer_models=3, repeat=1),
        "sequence_lstm": dict(seeds=10, configs=3, epochs=20, peer_models=3, repeat=1),
        "tabular_mlp": dict(seeds=5, configs=2, epochs=2, peer_models=4, repeat=3),
        "residual_mlp": dict(seeds=5, configs=2, epochs=2, peer_models=4, repeat=3),
        "transformer": dict(seeds=5, configs=2, epochs=1, peer_models=4, repeat=3),
        "module_scaling": dict(members=[1, 2, 5, 10, 20], epochs=1, peer_models=2, repeat=3),
        "scaling": dict(members=[1, 10, 100, 1000], member_epochs=200,
                        rows={30: 200, 300: 50, 3000: 10, 10000: 4}, row_members=30, repeat=3),
        "memory": dict(members=1000, epochs=100),
        "contention": dict(seeds=30, epochs=2000, repeat=3, competitors=[0, 1, 2]),
    },
    "quick": {
        "seed_mlp": dict(seeds=30, epochs=200, peer_models=2, peer_epochs=200, warm_epochs=2, repeat=3),
        "digits_cnn": dict(seeds=5, configs=2, epochs=3, peer_models=2, repeat=3),
        "sequence_lstm": dict(seeds=5, configs=2, epochs=3, peer_models=2, repeat=3),
        "tabular_mlp": dict(seeds=5, configs=2, epochs=1, peer_models=2, repeat=1),
        "residual_mlp": dict(seeds=5, configs=2, epochs=1, peer_models=2, repeat=1),
        "transformer": dict(seeds=5, configs=2, epochs=1, peer_models=2, repeat=1),
        "module_scaling": dict(members=[1, 4], epochs=1, peer_models=1, repeat=1),
        "scaling": dict(members=[1, 10, 100, 1000], member_epochs=20,
                        rows={30: 20, 300: 5, 3000: 1, 10000: 1}, row_members=30, repeat=3),
        "memory": dict(members=1000, epochs=5),
        "contention": dict(seeds=30, epochs=400, repeat=3, competitors=[0, 1, 2]),
    },
}
TARGETS = {("seed_mlp", "sklearn"): 25.0, ("seed_mlp", "torch_loop"): 50.0,
           ("digits_cnn", "torch_loop"): 5.0, ("sequence_lstm", "torch_loop"): 5.0,
           ("tabular_mlp", "torch_loop"): 4.0, ("tabular_mlp", "torch_func"): 2.0,
           ("residual_mlp", "torch_loop"): 3.0, ("residual_mlp", "torch_func"): 1.5,
           ("transformer", "torch_loop"): 3.0, ("transformer", "torch_func"): 1.5}
SCALING_TARGET = 1.0   # module_scaling: reglab never slower than the loop at any population size
MEMORY_TARGET_GIB = 2.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def measurement(impl, members, epochs, walls, **extra):
    """``members`` models × ``epochs`` epochs each, timed ``len(walls)`` times; the fastest run counts."""
    walls = [walls] if isinstance(walls, (int, float)) else list(walls)
    wall = min(walls)
    return {"impl": impl, "members": members, "epochs": epochs, "model_epochs": members * epochs,
            "wall_s": wall, "model_epochs_per_s": members * epochs / wall, "runs_s": walls, **extra}


def repeated(repeat: int, fn):
    """Wall seconds of ``repeat`` calls of ``fn()`` (which returns its own wall seconds)."""
    return [fn() for _ in range(repeat)]


# --------------------------------------------------------------------------------------------- data

def moons(n: int):
    X, y = make_moons(n, noise=0.2, random_state=1)
    return X.astype(np.float32), y.astype(np.int64)


def seed_data():
    X, y = moons(100)
    return X[:30], y[:30]


def digits(layout: str):
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)[:1000]
    y = d.target.astype(np.int64)[:1000]
    return (X.reshape(-1, 1, 8, 8) if layout == "image" else X.reshape(-1, 8, 8)), y


# ------------------------------------------------------------------------------------------- models

def build_mlp(lam: float) -> nn.Sequential:
    m = nn.Sequential(nn.Linear(2, 500), nn.ReLU(), nn.Linear(500, 1))
    reglab.regularize(m[0], kernel=reglab.L2(lam))
    return m


CNN_CONFIGS = [dict(lam=1e-3, dropout=0.25), dict(lam=1e-4, dropout=0.0), dict(lam=1e-2, dropout=0.5)]
LSTM_CONFIGS = [dict(lam=1e-3), dict(lam=1e-4), dict(lam=1e-2)]


def cnn_layers(dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(16 * 3 * 3, 64), nn.ReLU(), nn.Linear(64, 10))


def build_cnn(lam: float, dropout: float) -> nn.Sequential:
    m = cnn_layers(dropout)
    reglab.regularize(m[0], kernel=reglab.L2(lam))
    reglab.regularize(m[5], kernel=reglab.L2(lam))
    return m


def build_lstm(lam: float) -> nn.Sequential:
    m = nn.Sequential(nn.LSTM(8, 32, batch_first=True), reglab.RNNOutput(), nn.Linear(32, 10))
    reglab.regularize(m[0], kernel=reglab.L2(lam), recurrent=reglab.L2(lam))
    return m


# -------------------------------------------------------------------------------------------- peers

def reglab_population(build, configs, seeds, X, y, epochs, task, **kwargs):
    """Wall seconds and result of one reglab.train_population call."""
    wall, result = timed(reglab.train_population, build, configs, seeds=seeds, train=(X, y), epochs=epochs,
                         batch_size=BATCH, task=task, progress=False, **kwargs)
    done = int(result.epochs_run.sum())
    if done != len(result) * epochs or result.diverged.any():
        raise RuntimeError(f"reglab population ran {done} model-epochs (expected {len(result) * epochs}); "
                           f"{int(result.diverged.sum())} diverged")
    return wall, result


@contextlib.contextmanager
def general_path():
    """Send every model down reglab's general (vmap) population path, the stacked-layer path's
    alternative: the rows ``reglab_general`` show what the stacked layers and the fused kernel buy."""
    before = os.environ.get("REGLAB_POPULATION")
    os.environ["REGLAB_POPULATION"] = "general"
    try:
        yield
    finally:
        if before is None:
            del os.environ["REGLAB_POPULATION"]
        else:
            os.environ["REGLAB_POPULATION"] = before


@contextlib.contextmanager
def vmap_attention():
    """reglab's general path with nn.MultiheadAttention left to PyTorch's own function under vmap
    (``functional._stacked_self_attention`` declines): the rows ``reglab_vmap_attention`` show what
    the population's stacked self-attention buys."""
    from reglab.population import functional
    before = functional._stacked_self_attention
    functional._stacked_self_attention = lambda *args: None
    try:
        yield
    finally:
        functional._stacked_self_attention = before


def general_row(build, configs, seeds, X, y, epochs, task, repeat, members):
    """The same population through the general path: one measurement (first a 1-epoch warm-up)."""
    with general_path():
        reglab_population(build, configs, seeds, X, y, 1, task)
        walls = repeated(repeat, lambda: reglab_population(build, configs, seeds, X, y, epochs, task)[0])
    return measurement("reglab_general", members, epochs, walls)


def sklearn_mlp(X, y, lam, seed, epochs):
    """scikit-learn's MLPClassifier, exactly ``epochs`` epochs (tol=0, no early convergence stop)."""
    clf = MLPClassifier(hidden_layer_sizes=(500,), alpha=lam, solver="adam", batch_size=BATCH, max_iter=epochs,
                        tol=0, n_iter_no_change=10 ** 9, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)    # max_iter reached: the point
        warnings.simplefilter("ignore", UserWarning)           # batch_size clipped to the 30 rows
        clf.fit(X, y)
    if clf.n_iter_ != epochs:
        raise RuntimeError(f"MLPClassifier ran {clf.n_iter_} epochs, expected {epochs}")
    return clf


def torch_loop(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, loss_fn, l2):
    """The hand-written PyTorch loop (benchmarks/models.py: train_loop), torch.optim.Adam's default ε."""
    return models.train_loop(model, X, y, epochs, seed, loss_fn, l2)


def torch_mlp(X, y, lam, seed, epochs):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 500), nn.ReLU(), nn.Linear(500, 1))
    return torch_loop(model, X, y, epochs, seed, nn.BCEWithLogitsLoss(), lambda m: lam * m[0].weight.pow(2).sum())


def torch_cnn(X, y, lam, dropout, seed, epochs):
    torch.manual_seed(seed)
    model = cnn_layers(dropout)
    return torch_loop(model, X, y, epochs, seed, nn.CrossEntropyLoss(),
                      lambda m: lam * (m[0].weight.pow(2).sum() + m[5].weight.pow(2).sum()))


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 32, batch_first=True)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        return self.out(self.lstm(x)[0][:, -1])


def torch_lstm(X, y, lam, seed, epochs):
    torch.manual_seed(seed)
    model = LSTMNet()
    return torch_loop(model, X, y, epochs, seed, nn.CrossEntropyLoss(),
                      lambda m: lam * (m.lstm.weight_ih_l0.pow(2).sum() + m.lstm.weight_hh_l0.pow(2).sum()))


def one_at_a_time(impl, fn, jobs, epochs, repeat):
    """Train ``jobs`` (kwargs per model) one after another, ``repeat`` times; one measurement."""
    runs = [[timed(fn, epochs=epochs, **job)[0] for job in jobs] for _ in range(repeat)]
    best = min(runs, key=sum)
    return measurement(impl, len(jobs), epochs, [sum(r) for r in runs], per_model_s=best)


def with_ratios(case, rows, ref="reglab"):
    """Add reglab's speed-up over each peer and the target verdicts."""
    base = next(r for r in rows if r["impl"] == ref)["model_epochs_per_s"]
    targets = []
    for r in rows:
        if r["impl"] == ref:
            continue
        r["reglab_speedup"] = base / r["model_epochs_per_s"]
        target = TARGETS.get((case, r["impl"]))
        if target is not None:
            targets.append({"case": case, "versus": r["impl"], "target": target, "speedup": r["reglab_speedup"],
                            "met": r["reglab_speedup"] >= target})
    return targets


# -------------------------------------------------------------------------------------------- cases

def case_seed_mlp(s):
    X, y = seed_data()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).float().unsqueeze(1)
    seeds = list(range(s["seeds"]))
    configs = [{"lam": lam} for lam in LAMBDAS]
    members = len(configs) * len(seeds)
    # The peers' subset walks the λ grid first so that every strength is represented.
    jobs = [{"lam": lam, "seed": seed} for seed in seeds for lam in LAMBDAS][:s["peer_models"]]

    log(f"seed_mlp: warm-up (reglab {members} members × {s['warm_epochs']} epochs, first call)")
    warm, _ = reglab_population(build_mlp, configs, seeds, X, y, s["warm_epochs"], "binary")
    log(f"seed_mlp: reglab {members} members × {s['epochs']} epochs")
    walls = repeated(s["repeat"], lambda: reglab_population(build_mlp, configs, seeds, X, y, s["epochs"], "binary")[0])
    pop = measurement("reglab", members, s["epochs"], walls)
    pop["first_call_s"] = warm
    pop["first_call_overhead_s"] = max(0.0, warm - s["warm_epochs"] * pop["wall_s"] / s["epochs"])

    log(f"seed_mlp: scikit-learn {len(jobs)} models × {s['peer_epochs']} epochs")
    sklearn_mlp(X, y, jobs[0]["lam"], 0, 2)
    sk = one_at_a_time("sklearn", lambda **kw: sklearn_mlp(X, y, **kw), jobs, s["peer_epochs"], s["repeat"])
    log(f"seed_mlp: PyTorch loop {len(jobs)} models × {s['peer_epochs']} epochs")
    torch_mlp(Xt, yt, jobs[0]["lam"], 0, 2)
    tl = one_at_a_time("torch_loop", lambda **kw: torch_mlp(Xt, yt, **kw), jobs, s["peer_epochs"], s["repeat"])

    log(f"seed_mlp: reglab's general path, {members} members × {s['epochs']} epochs")
    gen = general_row(build_mlp, configs, seeds, X, y, s["epochs"], "binary", s["repeat"], members)

    rows = [pop, sk, tl, gen]
    for r in rows:   # the whole 180-member 4000-epoch study at this rate
        r["study_wall_s"] = STUDY_MODELS * STUDY_EPOCHS / r["model_epochs_per_s"]
        r["study_wall_measured"] = r["impl"] == "reglab" and members == STUDY_MODELS and s["epochs"] == STUDY_EPOCHS
    targets = with_ratios("seed_mlp", rows)
    return {"description": "moons 30 rows, 2-500-1 ReLU MLP, L2 on hidden kernel, Adam, batch 32, 6 λ × 30 seeds",
            "rows": rows, "targets": targets,
            "notes": "sklearn: float32 inputs, alpha=λ (its L2 convention, on both layers); "
                     "torch loop: torch.optim.Adam, BCEWithLogitsLoss, λ·‖W1‖² in the loss"}


def _population_case(case, build, configs_all, layout, peer_fn, s):
    X, y = digits(layout)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    configs = configs_all[:s["configs"]]
    seeds = list(range(s["seeds"]))
    members = len(configs) * len(seeds)
    jobs = [dict(cfg, seed=i) for i, cfg in enumerate((configs * s["peer_models"])[:s["peer_models"]])]

    log(f"{case}: warm-up (reglab {members} members × 1 epoch, first call)")
    warm, _ = reglab_population(build, configs, seeds, X, y, 1, "multiclass")
    log(f"{case}: reglab {members} members × {s['epochs']} epochs")
    walls = repeated(s["repeat"], lambda: reglab_population(build, configs, seeds, X, y, s["epochs"], "multiclass")[0])
    pop = measurement("reglab", members, s["epochs"], walls)
    pop["first_call_s"] = warm
    pop["first_call_overhead_s"] = max(0.0, warm - pop["wall_s"] / s["epochs"])

    log(f"{case}: PyTorch loop {len(jobs)} models × {s['epochs']} epochs")
    peer_fn(Xt[:64], yt[:64], epochs=1, **jobs[0])
    tl = one_at_a_time("torch_loop", lambda **kw: peer_fn(Xt, yt, **kw), jobs, s["epochs"], s["repeat"])
    log(f"{case}: reglab's general path, {members} members × {s['epochs']} epochs")
    gen = general_row(build, configs, seeds, X, y, s["epochs"], "multiclass", s["repeat"], members)
    rows = [pop, tl, gen]
    targets = with_ratios(case, rows)
    return {"rows": rows, "targets": targets, "configs": configs}


def case_digits_cnn(s):
    out = _population_case("digits_cnn", build_cnn, CNN_CONFIGS, "image", torch_cnn, s)
    out["description"] = ("load_digits 1000 rows as 1×8×8, Conv2d(16,3)-ReLU-MaxPool2-Flatten-Dropout-Linear(64)-"
                          "ReLU-Linear(10), L2 on both kernels, Adam, batch 32")
    return out


def case_sequence_lstm(s):
    out = _population_case("sequence_lstm", build_lstm, LSTM_CONFIGS, "sequence", torch_lstm, s)
    out["description"] = ("load_digits 1000 rows as 8 steps × 8 features, LSTM(32)-last step-Linear(10), "
                          "L2 on input and recurrent kernels, Adam, batch 32")
    return out


def _accuracy_fields(accuracies) -> dict:
    return {"train_accuracy": float(np.mean(accuracies)), "train_accuracy_range": [min(accuracies), max(accuracies)]}


def _loop_models(spec, jobs, Xt, yt, epochs):
    """Wall seconds and models of the PyTorch loop over ``jobs``, one member after another."""
    start = time.perf_counter()
    trained = [models.torch_loop(spec["model"], job["config"], job["seed"], Xt, yt, epochs) for job in jobs]
    return time.perf_counter() - start, trained


def _warm_up(spec, configs, seeds, X, y, Xt, yt):
    """One short call of each implementation (lazy initialisation, reglab's kernels and probes)."""
    reglab_population(spec["build"], configs, seeds, X[:256], y[:256], 1, "binary")
    models.torch_func(spec["model"], configs, seeds, Xt[:256], yt[:256], 1)
    models.torch_loop(spec["model"], configs[0], seeds[0], Xt[:64], yt[:64], 1)


def _any_model_case(case, s):
    spec = models.CASES[case]
    X, y = spec["data"]()
    Xt, yt = models.torch_data(X, y)
    configs = spec["configs"][:s["configs"]]
    seeds = list(range(s["seeds"]))
    members = len(configs) * len(seeds)
    jobs = [dict(config=cfg, seed=i) for i, cfg in enumerate((configs * s["peer_models"])[:s["peer_models"]])]
    E, k = s["epochs"], s["repeat"]

    log(f"{case}: warm-up (each implementation once, 1 epoch on a few rows)")
    _warm_up(spec, configs, seeds, X, y, Xt, yt)

    groups = len(models.group_members(configs, seeds))
    walls = {"reglab": [], "loop": [], "func": [], "vmap_attention": []}
    attention = any(isinstance(m, torch.nn.MultiheadAttention) for m in spec["build"](**configs[0]).modules())
    for r in range(k):   # interleaved rounds: a machine that drifts slows every implementation alike
        log(f"{case} (round {r + 1}/{k}): reglab {members} members × {E} epochs")
        wall, result = reglab_population(spec["build"], configs, seeds, X, y, E, "binary")
        walls["reglab"].append(wall)
        if attention:
            log(f"{case} (round {r + 1}/{k}): reglab, PyTorch's attention under vmap, {members} members × {E} epochs")
            with vmap_attention():
                walls["vmap_attention"].append(reglab_population(spec["build"], configs, seeds, X, y, E, "binary")[0])
        log(f"{case} (round {r + 1}/{k}): PyTorch loop {len(jobs)} models × {E} epochs")
        wall, trained = _loop_models(spec, jobs, Xt, yt, E)
        walls["loop"].append(wall)
        log(f"{case} (round {r + 1}/{k}): torch.func {members} members × {E} epochs ({groups} stacked ensemble(s))")
        wall, ensembles = timed(models.torch_func, spec["model"], configs, seeds, Xt, yt, E)
        walls["func"].append(wall)
    pop = measurement("reglab", members, E, walls["reglab"],
                      **_accuracy_fields([models.model_accuracy(m, Xt, yt) for m in result.models]))
    loop = measurement("torch_loop", len(jobs), E, walls["loop"],
                       **_accuracy_fields([models.model_accuracy(m, Xt, yt) for m in trained]))
    func = measurement("torch_func", members, E, walls["func"], ensembles=groups,
                       **_accuracy_fields(models.ensemble_accuracies(ensembles, Xt, yt)))

    rows = [pop, loop, func]
    if attention:
        rows.append(measurement("reglab_vmap_attention", members, E, walls["vmap_attention"]))
    if isinstance(spec["build"](**configs[0]), torch.nn.Sequential):
        log(f"{case}: reglab's general path, {members} members × {E} epochs")
        rows.append(general_row(spec["build"], configs, seeds, X, y, E, "binary", k, members))
    return {"rows": rows, "targets": with_ratios(case, rows), "configs": configs}


def case_tabular_mlp(s):
    out = _any_model_case("tabular_mlp", s)
    out["description"] = ("make_classification(6000, 8, n_informative=5, flip_y=0.2), standardised; MLP 8-256-256-1 "
                          "(ReLU), L2 on both hidden kernels, binary, Adam, batch 32")
    return out


def case_residual_mlp(s):
    out = _any_model_case("residual_mlp", s)
    out["description"] = ("make_classification(6000, 8) as tabular_mlp; Linear(8,128)-BatchNorm1d-ReLU, 2 residual blocks "
                          "h + Dropout(ReLU(BatchNorm1d(Linear(128,128)(h)))), Linear(128,1) in a custom forward(); "
                          "L2 on the blocks' kernels; configs differ in dropout rate and L2 (torch.func: one stacked "
                          "ensemble per dropout rate)")
    return out


def case_transformer(s):
    out = _any_model_case("transformer", s)
    out["description"] = (f"{models.VOCAB}-token sequences of length {models.LENGTH}, 4000 rows, label: the 7 comes "
                          "before the 9; Embedding(50,32) + learned positions, 2-layer TransformerEncoder (d_model 32, "
                          "4 heads, feed-forward 64, dropout 0.1, batch_first), mean over positions, Linear(32,1); "
                          "L2 on the feed-forward kernels")
    return out


def case_module_scaling(s):
    rows, targets = [], []
    E, k = s["epochs"], s["repeat"]
    for case in ("residual_mlp", "transformer"):
        spec = models.CASES[case]
        X, y = spec["data"]()
        Xt, yt = models.torch_data(X, y)
        configs = spec["configs"][:1]
        _warm_up(spec, configs, [0], X, y, Xt, yt)
        jobs = [dict(config=configs[0], seed=i) for i in range(s["peer_models"])]
        walls = {"loop": []}
        for r in range(k):   # interleaved rounds: a machine that drifts slows every implementation alike
            log(f"module_scaling (round {r + 1}/{k}): {case}, PyTorch loop {len(jobs)} models × {E} epochs")
            walls["loop"].append(_loop_models(spec, jobs, Xt, yt, E)[0])
            for P in s["members"]:
                seeds = list(range(P))
                log(f"module_scaling (round {r + 1}/{k}): {case}, reglab and torch.func {P} member(s) × {E} epochs")
                walls.setdefault(("reglab", P), []).append(
                    reglab_population(spec["build"], configs, seeds, X, y, E, "binary")[0])
                walls.setdefault(("func", P), []).append(
                    timed(models.torch_func, spec["model"], configs, seeds, Xt, yt, E)[0])
        loop = measurement("torch_loop", len(jobs), E, walls["loop"], model=case)
        rows.append(loop)
        for P in s["members"]:
            pop = measurement("reglab", P, E, walls[("reglab", P)], model=case)
            func = measurement("torch_func", P, E, walls[("func", P)], model=case)
            pop["loop_speedup"] = pop["model_epochs_per_s"] / loop["model_epochs_per_s"]
            pop["func_speedup"] = pop["model_epochs_per_s"] / func["model_epochs_per_s"]
            rows += [pop, func]
            targets.append({"case": "module_scaling", "versus": f"torch_loop, {case}, {P} member(s)",
                            "target": SCALING_TARGET, "speedup": pop["loop_speedup"],
                            "met": pop["loop_speedup"] >= SCALING_TARGET})
    return {"description": "residual_mlp and transformer (first config) as the population grows; the loop's rate "
                           "(one member after another) does not depend on the population size",
            "rows": rows, "targets": targets}


def case_scaling(s):
    rows = []
    X, y = seed_data()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).float().unsqueeze(1)
    E, k = s["member_epochs"], s["repeat"]
    # Warm both fused-kernel variants (one shared batch; gathered batches) before timing.
    Xw, yw = moons(300)
    warm_small, _ = reglab_population(build_mlp, [{"lam": 1e-3}], [0], X, y, 1, "binary")
    warm_rows, _ = reglab_population(build_mlp, [{"lam": 1e-3}], [0], Xw, yw, 1, "binary")
    torch_mlp(Xt, yt, 1e-3, 0, 2)
    warm = {"one_batch_s": warm_small, "gathered_batches_s": warm_rows}

    for P in s["members"]:
        log(f"scaling: reglab {P} members × {E} epochs, 30 rows")
        walls = repeated(k, lambda: reglab_population(build_mlp, [{"lam": 1e-3}], list(range(P)), X, y, E, "binary")[0])
        rows.append(measurement("reglab", P, E, walls, axis="members", rows=30))
    log(f"scaling: PyTorch loop 1 model × {E} epochs, 30 rows")
    walls = repeated(k, lambda: timed(torch_mlp, Xt, yt, 1e-3, 0, E)[0])
    rows.append(measurement("torch_loop", 1, E, walls, axis="members", rows=30))

    P = s["row_members"]
    configs = [{"lam": lam} for lam in LAMBDAS]
    seeds = list(range(max(1, P // len(configs))))
    P = len(configs) * len(seeds)
    for n, epochs in s["rows"].items():
        Xn, yn = moons(n)
        log(f"scaling: reglab {P} members × {epochs} epochs, {n} rows")
        walls = repeated(k, lambda: reglab_population(build_mlp, configs, seeds, Xn, yn, epochs, "binary")[0])
        rows.append(measurement("reglab", P, epochs, walls, axis="rows", rows=n))
        log(f"scaling: PyTorch loop 1 model × {epochs} epochs, {n} rows")
        Xnt, ynt = torch.from_numpy(Xn), torch.from_numpy(yn).float().unsqueeze(1)
        walls = repeated(k, lambda: timed(torch_mlp, Xnt, ynt, 1e-3, 0, epochs)[0])
        rows.append(measurement("torch_loop", 1, epochs, walls, axis="rows", rows=n))
    for r in rows:
        r["model_samples_per_s"] = r["model_epochs_per_s"] * r["rows"]
    return {"description": "seed MLP (2-500-1 ReLU, L2, Adam, batch 32) on make_moons(n, noise=0.2)",
            "rows": rows, "targets": [], "first_call_s": warm}


def memory_child(members: int, epochs: int) -> None:
    """Runs in a fresh interpreter: train the population, print peak RSS as one JSON line."""
    X, y = seed_data()
    before = _maxrss_bytes()   # imports (torch, sklearn, numba) and data
    n_cfg = 10
    configs = [{"lam": float(lam)} for lam in np.logspace(-1, -6, n_cfg)]
    seeds = list(range(members // n_cfg))
    wall, result = reglab_population(build_mlp, configs, seeds, X, y, epochs, "binary")
    print(json.dumps({"members": len(result), "epochs": epochs, "wall_s": wall,
                      "rss_after_imports_bytes": before, "peak_rss_bytes": _maxrss_bytes()}))


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def case_memory(s, threads):
    log(f"memory: fresh subprocess, {s['members']} members × {s['epochs']} epochs (default memory budget)")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(s["members"]), str(s["epochs"])]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_gib = child["peak_rss_bytes"] / 2 ** 30
    row = measurement("reglab", child["members"], child["epochs"], child["wall_s"],
                      peak_rss_gib=peak_gib, rss_after_imports_gib=child["rss_after_imports_bytes"] / 2 ** 30)
    target = {"case": "memory", "versus": "peak RSS (GiB)", "target": MEMORY_TARGET_GIB, "value": peak_gib,
              "met": peak_gib < MEMORY_TARGET_GIB}
    return {"description": "seed MLP, 10 λ × 100 seeds, memory_budget default, fresh interpreter "
                           "(includes imports and numba kernels)", "rows": [row], "targets": [target]}


BUSY = "while True:\n    pass\n"   # a competitor: one busy core, no I/O, no network


def _contention_run(configs, seeds, X, y, epochs, threads):
    import reglab.threads

    reglab.threads._last_choice = None   # every run starts as a fresh process would
    wall, _ = reglab_population(build_mlp, configs, seeds, X, y, epochs, "binary", threads=threads)
    return wall


def case_contention(s):
    X, y = seed_data()
    seeds = list(range(s["seeds"]))
    configs = [{"lam": lam} for lam in LAMBDAS]
    members = len(configs) * len(seeds)
    every = reglab.threads.max_threads()
    impls = {"default": None, "one_thread": 1, f"pinned_{every}": every}
    reglab_population(build_mlp, configs, seeds, X, y, 2, "binary")   # compile / load the kernels
    rows = []
    for n in s["competitors"]:
        log(f"contention: {n} competing busy process(es); {members} members × {s['epochs']} epochs, "
            f"{', '.join(impls)} interleaved × {s['repeat']}")
        procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(n)]
        try:
            time.sleep(0.5 if n else 0.0)
            walls = {impl: [] for impl in impls}
            for _ in range(s["repeat"]):
                for impl, threads in impls.items():
                    walls[impl].append(_contention_run(configs, seeds, X, y, s["epochs"], threads))
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        finally:
            for p in procs:
                p.kill()
                p.wait()
        for impl, w in walls.items():
            median = float(np.median(w))
            rows.append(dict(measurement(impl, members, s["epochs"], median), competitors=n, runs_s=w,
                             statistic="median", load_average_1min=load))
    rate = {(r["competitors"], r["impl"]): r["model_epochs_per_s"] for r in rows}
    quiet = rate[(0, "default")]
    targets = []
    if (1, "default") in rate:
        value = rate[(1, "default")] / quiet
        targets.append({"case": "contention", "versus": "quiet rate, one competitor", "target": 0.5,
                        "speedup": value, "met": value >= 0.5})
    for n in s["competitors"]:
        value = rate[(n, "default")] / rate[(n, "one_thread")]
        targets.append({"case": "contention", "versus": f"one thread, {n} competitor(s)", "target": 1.0,
                        "speedup": value, "met": value >= 1.0})
    return {"description": f"seed MLP {members} members on {every} usable CPUs, quiet and with busy competitors",
            "rows": rows, "targets": targets}


# ------------------------------------------------------------------------------------------ machine

def machine_info(mode: str) -> dict:
    cpu = platform.processor() or platform.machine()
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        mem = None
    try:
        import numba
        numba_version, numba_threads = numba.__version__, numba.get_num_threads()
    except ImportError:
        numba_version = numba_threads = None
    try:
        commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--", "../src"],
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = None, None
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": mode,
        "command": "python benchmarks/run.py" + (" --quick" if mode == "quick" else ""),
        "cpu": cpu,
        "cpu_simd": [f for f in ("avx2", "fma", "avx512f") if f in flags],
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "numba": numba_version,
        "numba_threads": numba_threads,
        "reglab": reglab.__version__,
        "git_commit": commit,
        "src_dirty": dirty,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# ---------------------------------------------------------------------------------------- reporting

NAMES = {"reglab": "reglab population", "sklearn": "scikit-learn MLPClassifier", "torch_loop": "PyTorch loop",
         "torch_func": "torch.func ensemble", "reglab_general": "reglab, general (vmap) path",
         "reglab_vmap_attention": "reglab, PyTorch's attention under vmap"}
ANY_MODEL = ("tabular_mlp", "residual_mlp", "transformer")


def _fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


def _fmt_x(ratio: float) -> str:
    """A speed-up, rounded down so that a shown value never reads as meeting a target it misses."""
    return f"{math.floor(ratio * 10) / 10:.1f}×"


def _fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Measured with `{m['command']}` on {m['date'][:10]}: {m['cpu']}, {m['usable_cores']} cores, "
             f"torch {m['torch']} ({m['torch_threads']} threads), numpy {m['numpy']}, scikit-learn {m['sklearn']}, "
             f"numba {m['numba']}; mode **{m['mode']}**. Rates are model-epochs per second; peers that train one "
             "model at a time are timed on a subset of the members (column *timed*); each timing is the fastest of "
             "the runs listed in results.json.", ""]
    cases = results["cases"]
    speed = [c for c in ("seed_mlp", "digits_cnn", "sequence_lstm") if c in cases]
    if speed:
        lines += ["| Case | Implementation | Timed (models × epochs) | Wall | Model-epochs/s | reglab speed-up | Target |",
                  "|---|---|---|---|---|---|---|"]
        for case in speed:
            for r in cases[case]["rows"]:
                target = next((t for t in cases[case]["targets"] if t["versus"] == r["impl"]), None)
                speedup = _fmt_x(r["reglab_speedup"]) if "reglab_speedup" in r else "—"
                verdict = (f"≥ {target['target']:g}×: {'met' if target['met'] else 'NOT met'}" if target else "")
                lines.append(f"| {case} | {NAMES[r['impl']]} | {r['members']} × {r['epochs']} | {_fmt_s(r['wall_s'])} | "
                             f"{_fmt_rate(r['model_epochs_per_s'])} | {speedup} | {verdict} |")
        lines.append("")
    if "seed_mlp" in cases:
        rows = cases["seed_mlp"]["rows"]
        parts = []
        for r in rows:
            how = "measured" if r.get("study_wall_measured") else "extrapolated"
            parts.append(f"{NAMES[r['impl']]} {_fmt_s(r['study_wall_s'])} ({how})")
        lines += ["The seeds' whole study (180 members × 4000 epochs = 720,000 model-epochs): " + "; ".join(parts) + ".", ""]
    overhead = [(c, r["first_call_overhead_s"]) for c in speed for r in cases[c]["rows"] if "first_call_overhead_s" in r]
    if overhead:
        lines += ["First-call overhead of reglab (numba compiles or loads its kernels; excluded above): "
                  + ", ".join(f"{c} {_fmt_s(v)}" for c, v in overhead) + ".", ""]
    any_model = [c for c in ANY_MODEL if c in cases]
    if any_model:
        lines += ["Any nn.Module (models and peers in benchmarks/models.py): the PyTorch loop trains one member after "
                  "another, the torch.func ensemble every member at once (stack_module_state, vmap(functional_call), "
                  "one Adam over the stacked tensors). Train accuracy: the mean over the members each implementation "
                  "trained, in eval mode on the training set.", "",
                  "| Case | Implementation | Timed (models × epochs) | Wall | Model-epochs/s | reglab speed-up | Target "
                  "| Train accuracy |",
                  "|---|---|---|---|---|---|---|---|"]
        for case in any_model:
            for r in cases[case]["rows"]:
                target = next((t for t in cases[case]["targets"] if t["versus"] == r["impl"]), None)
                speedup = _fmt_x(r["reglab_speedup"]) if "reglab_speedup" in r else "—"
                verdict = (f"≥ {target['target']:g}×: {'met' if target['met'] else 'NOT met'}" if target else "")
                accuracy = f"{r['train_accuracy']:.3f}" if "train_accuracy" in r else "—"
                lines.append(f"| {case} | {NAMES[r['impl']]} | {r['members']} × {r['epochs']} | {_fmt_s(r['wall_s'])} | "
                             f"{_fmt_rate(r['model_epochs_per_s'])} | {speedup} | {verdict} | {accuracy} |")
        lines.append("")
    if "module_scaling" in cases:
        rows = cases["module_scaling"]["rows"]
        lines += ["Any nn.Module, scaling with members (first config; the loop's rate, one member after another, is "
                  f"the same at every size; target: reglab ≥ {SCALING_TARGET:g}× the loop at every size):", "",
                  "| Model | Members | Epochs | reglab wall | reglab model-epochs/s | torch.func model-epochs/s "
                  "| PyTorch loop model-epochs/s | reglab ÷ loop | reglab ÷ torch.func |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for model in dict.fromkeys(r["model"] for r in rows):
            loop = next(r for r in rows if r["model"] == model and r["impl"] == "torch_loop")
            func = {r["members"]: r for r in rows if r["model"] == model and r["impl"] == "torch_func"}
            for r in (r for r in rows if r["model"] == model and r["impl"] == "reglab"):
                lines.append(f"| {model} | {r['members']} | {r['epochs']} | {_fmt_s(r['wall_s'])} | "
                             f"{_fmt_rate(r['model_epochs_per_s'])} | {_fmt_rate(func[r['members']]['model_epochs_per_s'])} | "
                             f"{_fmt_rate(loop['model_epochs_per_s'])} | {_fmt_x(r['loop_speedup'])} | "
                             f"{_fmt_x(r['func_speedup'])} |")
        lines.append("")
    if "scaling" in cases:
        rows = cases["scaling"]["rows"]
        mem_rows = [r for r in rows if r["axis"] == "members"]
        lines += ["Scaling with members (seed MLP, 30 rows):", "",
                  "| Implementation | Members | Epochs | Wall | Model-epochs/s |", "|---|---|---|---|---|"]
        lines += [f"| {NAMES[r['impl']]} | {r['members']} | {r['epochs']} | {_fmt_s(r['wall_s'])} | "
                  f"{_fmt_rate(r['model_epochs_per_s'])} |" for r in mem_rows]
        row_rows = [r for r in rows if r["axis"] == "rows"]
        lines += ["", "Scaling with training rows (seed MLP on make_moons(n)):", "",
                  "| Implementation | Rows | Members | Epochs | Wall | Model-epochs/s | Model-samples/s |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {NAMES[r['impl']]} | {r['rows']:,} | {r['members']} | {r['epochs']} | {_fmt_s(r['wall_s'])} | "
                  f"{_fmt_rate(r['model_epochs_per_s'])} | {_fmt_rate(r['model_samples_per_s'])} |" for r in row_rows]
        lines.append("")
    if "contention" in cases:
        rows = cases["contention"]["rows"]
        impls = list(dict.fromkeys(r["impl"] for r in rows))
        label = {"default": "default policy", "one_thread": "one thread"}
        lines += ["Contention (seed MLP, median model-epochs/s of interleaved runs; competitors are busy processes):", "",
                  "| Competing processes | " + " | ".join(label.get(i, i.replace("_", " ")) for i in impls)
                  + " | default ÷ one thread | default ÷ quiet default |",
                  "|---|" + "---|" * (len(impls) + 2)]
        rate = {(r["competitors"], r["impl"]): r["model_epochs_per_s"] for r in rows}
        quiet = rate[(0, "default")]
        for n in sorted({r["competitors"] for r in rows}):
            lines.append(f"| {n} | " + " | ".join(_fmt_rate(rate[(n, i)]) for i in impls)
                         + f" | {rate[(n, 'default')] / rate[(n, 'one_thread')]:.2f}× | {rate[(n, 'default')] / quiet:.2f}× |")
        lines.append("")
    if "memory" in cases:
        r = cases["memory"]["rows"][0]
        t = cases["memory"]["targets"][0]
        lines += [f"Memory: a {r['members']}-member seed-MLP population, {r['epochs']} epochs, default memory budget, "
                  f"peaks at **{r['peak_rss_gib']:.2f} GiB** RSS in a fresh process ({r['rss_after_imports_gib']:.2f} GiB "
                  f"after imports, before training); target < {t['target']:g} GiB: {'met' if t['met'] else 'NOT met'}.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main

CASES = ["seed_mlp", "digits_cnn", "sequence_lstm", *ANY_MODEL, "module_scaling", "scaling", "memory", "contention"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized run (about two minutes)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--threads", type=int, default=None,
                        help="set torch's and numba's thread count (default: their own defaults)")
    parser.add_argument("--repeat", type=int, default=None, help="time every measurement this many times "
                        "(default: 3 in quick mode; 1 for the long full-mode cases, 3 for scaling)")
    parser.add_argument("--output-dir", default=str(HERE), help="where results.json and results.md go")
    parser.add_argument("--memory-child", nargs=2, type=int, metavar=("MEMBERS", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            import numba
            numba.set_num_threads(args.threads)
        except ImportError:
            pass
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0

    mode = "quick" if args.quick else "full"
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    sizes = {case: dict(s, **({"repeat": args.repeat} if args.repeat and "repeat" in s else {}))
             for case, s in SIZES[mode].items()}
    results = {"machine": machine_info(mode), "cases": {}}
    if args.cases != ",".join(CASES):
        results["machine"]["command"] += f" --cases {args.cases}"
    if args.threads:
        results["machine"]["command"] += f" --threads {args.threads}"
    if args.repeat:
        results["machine"]["command"] += f" --repeat {args.repeat}"
    start = time.perf_counter()
    for case in CASES:
        if case not in wanted:
            continue
        t0 = time.perf_counter()
        fn = globals()[f"case_{case}"]
        out = fn(sizes[case], args.threads) if case == "memory" else fn(sizes[case])
        out["sizes"] = sizes[case]
        out["case_wall_s"] = time.perf_counter() - t0
        results["cases"][case] = out
        log(f"{case}: done in {out['case_wall_s']:.1f} s")
    results["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["total_wall_s"] = time.perf_counter() - start
    results["targets"] = [t for c in results["cases"].values() for t in c["targets"]]

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out_dir / "results.md").write_text(table + "\n")
    print(table)
    print()
    for t in results["targets"]:
        shown = (f"{t['speedup']:.2f}×" if t["case"] == "contention" else _fmt_x(t["speedup"])) if "speedup" in t \
            else f"{t['value']:.2f}"
        bound = f"≥ {t['target']:g}×" if "speedup" in t else f"< {t['target']:g}"
        print(f"{'PASS' if t['met'] else 'FAIL'}  {t['case']} vs {t['versus']}: {shown} (target {bound})")
    load = results["machine"]["load_average_start"]
    if load and load[0] > 0.5:
        print(f"note: load average was {load[0]:.2f} when the run started (on {results['machine']['usable_cores']} "
              "cores); other work on this machine skews timings.")
    print(f"total {results['total_wall_s']:.0f} s; wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
