"""reglab on a GPU: populations against a PyTorch loop and a torch.func ensemble on the same device.

    python benchmarks/gpu.py            # make bench-gpu: needs CUDA; says why and exits 0 without it
    python benchmarks/gpu.py --device cpu --quick    # the same code on the CPU (a smoke run, not a figure)

Cases (model-epochs per second, wall time around the whole training call with
``torch.cuda.synchronize()`` before and after, peak GPU memory from ``torch.cuda.max_memory_allocated``):

seed_mlp     moons, 30 rows, 2-500-1 ReLU MLP, L2 on the hidden kernel, Adam, batch 32, 6 λ × 30 seeds.
tabular_mlp  make_classification(6000, 8, n_informative=5, flip_y=0.2), MLP 8-256-256-1, 2 L2 × 5 seeds.
digits_cnn   load_digits as 1×8×8 images, Conv-ReLU-MaxPool-Dropout-Linear-ReLU-Linear, 3 configs × 10 seeds.

Peers, on the same device with the same data, batch size, epochs and Adam: ``loop`` trains one member
after another (the hand-written PyTorch loop of benchmarks/models.py, its batches gathered on the
device); ``torch_func`` the PyTorch ensembling tutorial's recipe (stack_module_state + vmap of
functional_call, one Adam over the stacked tensors). Target (issue 13): reglab ≥ 15× the loop for
the seed MLP and the tabular MLP. Writes ``benchmarks/results_gpu.json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import reglab  # noqa: E402
import models  # noqa: E402  (the tabular MLP and its data)
import run as cpu_bench  # noqa: E402  (the seed MLP and digits CNN models and data)

BATCH, LR = 32, 1e-3
SIZES = {"full": dict(seed_epochs=1000, seed_peer=6, tab_epochs=5, tab_peer=2, cnn_epochs=20, cnn_peer=3),
         "quick": dict(seed_epochs=20, seed_peer=2, tab_epochs=1, tab_peer=1, cnn_epochs=2, cnn_peer=1)}
TARGETS = {("seed_mlp", "loop"): 15.0, ("tabular_mlp", "loop"): 15.0}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(on, fn, *args, **kwargs):
    sync(on)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(on)
    return time.perf_counter() - start, out


def loop(model, X, y, epochs, seed, loss_fn, penalty, device):
    """One member, the plain PyTorch loop of benchmarks/models.py on ``device``."""
    return models.train_loop(model.to(device), X, y, epochs, seed, loss_fn, penalty, eps=1e-7, device=device)


def ensemble(models_, X, y, epochs, seeds, loss_fn, penalties, device):
    """torch.func's recipe: stacked members, vmap(functional_call), one Adam over the stacks."""
    params, buffers = stack_module_state([m.to(device) for m in models_])
    base = copy.deepcopy(models_[0]).to("meta")
    forward = torch.vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, 0), randomness="different")
    opt = torch.optim.Adam(params.values(), lr=LR, eps=1e-7)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    n = X.shape[0]
    for _ in range(epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
        for start in range(0, n, BATCH):
            idx = order[:, start:start + BATCH]
            out = forward(params, buffers, X[idx])
            loss = torch.stack([loss_fn(out[i], y[idx[i]]) for i in range(len(seeds))]).sum() + penalties(params)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return params


def rate(members, epochs, wall):
    return members * epochs / wall


def case(name, device, build, configs, seeds, X, y, epochs, peer_members, peer_loss, peer_penalty, stacked_penalty,
         task, peer_build):
    rows = []
    Xd, yd = torch.as_tensor(X, device=device), torch.as_tensor(y, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reglab.train_population(build, configs, seeds[:1], train=(X, y), epochs=1, task=task, batch_size=BATCH,
                            device=device, progress=False)   # warm-up
    wall, _ = timed(device, reglab.train_population, build, configs, seeds, train=(X, y), epochs=epochs, task=task,
                    batch_size=BATCH, device=device, progress=False)
    members = len(configs) * len(seeds)
    rows.append({"impl": "reglab", "members": members, "epochs": epochs, "wall_s": wall,
                 "model_epochs_per_s": rate(members, epochs, wall),
                 "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None})
    jobs = [(c, s) for c in configs for s in seeds][:peer_members]
    walls = []
    for c, s in jobs:
        torch.manual_seed(s)
        w, _ = timed(device, loop, peer_build(**c), Xd, peer_loss(yd), epochs, s, peer_loss.loss, peer_penalty(c), device)
        walls.append(w)
    rows.append({"impl": "loop", "members": len(jobs), "epochs": epochs, "wall_s": sum(walls),
                 "model_epochs_per_s": rate(len(jobs), epochs, sum(walls))})
    for c in configs[:1]:
        ms = []
        for s in seeds:
            torch.manual_seed(s)
            ms.append(peer_build(**c))
        w, _ = timed(device, ensemble, ms, Xd, peer_loss(yd), epochs, seeds, peer_loss.loss, stacked_penalty(c), device)
        rows.append({"impl": "torch_func", "members": len(seeds), "epochs": epochs, "wall_s": w,
                     "model_epochs_per_s": rate(len(seeds), epochs, w)})
    base = rows[0]["model_epochs_per_s"]
    for r in rows[1:]:
        r["reglab_speedup"] = base / r["model_epochs_per_s"]
        target = TARGETS.get((name, r["impl"]))
        if target is not None:
            r["target"], r["met"] = target, r["reglab_speedup"] >= target
    return rows


class Binary:
    """BCE with logits against float (n, 1) targets."""

    def __call__(self, y):
        return y.float().reshape(-1, 1)

    @staticmethod
    def loss(out, y):
        return F.binary_cross_entropy_with_logits(out, y)


class Multiclass:
    def __call__(self, y):
        return y.long()

    @staticmethod
    def loss(out, y):
        return F.cross_entropy(out, y)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU here (torch.cuda.is_available() is False): nothing measured. "
              "Run it on a machine with one (make bench-gpu), or --device cpu for a smoke run.")
        return 0
    device = torch.device(args.device)
    size = SIZES["quick" if args.quick else "full"]
    results = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
               "torch": torch.__version__, "reglab": reglab.__version__ if hasattr(reglab, "__version__") else None,
               "mode": "quick" if args.quick else "full", "cases": {}}

    X, y = cpu_bench.seed_data()
    lams = cpu_bench.LAMBDAS
    results["cases"]["seed_mlp"] = case(
        "seed_mlp", device, cpu_bench.build_mlp, [{"lam": v} for v in lams], list(range(30)), X, y, size["seed_epochs"],
        size["seed_peer"], Binary(), lambda c: (lambda m: c["lam"] * m[0].weight.pow(2).sum()),
        lambda c: (lambda p: c["lam"] * p["0.weight"].pow(2).sum()), "binary",
        lambda lam: nn.Sequential(nn.Linear(2, 500), nn.ReLU(), nn.Linear(500, 1)))

    X, y = models.tabular()
    results["cases"]["tabular_mlp"] = case(
        "tabular_mlp", device, models.build_tabular, [{"l2": 1e-4}, {"l2": 1e-3}], list(range(5)), X, y,
        size["tab_epochs"], size["tab_peer"], Binary(),
        lambda c: (lambda m: c["l2"] * (m[0].weight.pow(2).sum() + m[2].weight.pow(2).sum())),
        lambda c: (lambda p: c["l2"] * (p["0.weight"].pow(2).sum() + p["2.weight"].pow(2).sum())), "binary",
        lambda l2: models.tabular_mlp(l2))

    X, y = cpu_bench.digits("image")
    results["cases"]["digits_cnn"] = case(
        "digits_cnn", device, cpu_bench.build_cnn, cpu_bench.CNN_CONFIGS, list(range(10)), X, y, size["cnn_epochs"],
        size["cnn_peer"], Multiclass(), lambda c: (lambda m: c["lam"] * (m[0].weight.pow(2).sum() + m[5].weight.pow(2).sum())),
        lambda c: (lambda p: c["lam"] * (p["0.weight"].pow(2).sum() + p["5.weight"].pow(2).sum())), "multiclass",
        lambda lam, dropout: cpu_bench.cnn_layers(dropout))

    out = HERE / ("results_gpu.json" if device.type == "cuda" else "results_gpu_smoke.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    for name, rows in results["cases"].items():
        for r in rows:
            extra = f"  {r['reglab_speedup']:.1f}× slower than reglab" if "reglab_speedup" in r else ""
            print(f"{name:12s} {r['impl']:10s} {r['model_epochs_per_s']:12,.0f} model-epochs/s{extra}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
