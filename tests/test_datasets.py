"""Data as PyTorch users hold it (issue 13): torch Datasets and DataLoaders in fit, evaluate and
train_population, a dataset larger than memory that streams, and the ``device`` argument."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import reglab
from reglab.sources import NpyRows, resolve_device
from report_helpers import study_toml


def blobs(n=80, d=4, seed=0):
    g = np.random.default_rng(seed)
    X = g.normal(size=(n, d)).astype(np.float32)
    return X, (X[:, 0] - X[:, 1] > 0).astype(np.int64)


def build(rate=0.2):
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(rate), nn.Linear(16, 1))


class Rows(Dataset):
    """A plain map-style dataset, item by item (no __getitems__)."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return torch.from_numpy(self.X[i]), int(self.y[i])


def same_weights(a, b, exact=True):
    for p, q in zip(a.parameters(), b.parameters()):
        if exact:
            assert torch.equal(p, q)
        else:
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("wrap", [lambda X, y: TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), Rows])
def test_fit_on_a_dataset_is_fit_on_its_arrays(wrap):
    X, y = blobs()
    Xv, yv = blobs(40, seed=1)
    a, b = build(), build()
    ha = reglab.fit(a, (X, y), (Xv, yv), epochs=3, batch_size=16, seed=5, preset="keras", progress=False)
    hb = reglab.fit(b, wrap(X, y), wrap(Xv, yv), epochs=3, batch_size=16, seed=5, preset="keras", progress=False)
    same_weights(a, b)
    assert ha.history == hb.history
    assert reglab.evaluate(a, wrap(Xv, yv)) == reglab.evaluate(a, (Xv, yv))


def test_population_members_read_their_own_orders_from_a_dataset():
    X, y = blobs()
    ds = Rows(X, y)
    result = reglab.train_population(build, [{"rate": 0.1}, {"rate": 0.3}], [0, 1], train=ds, validation=Rows(*blobs(40, seed=1)),
                                     epochs=3, batch_size=16, progress=False)
    arrays = reglab.train_population(build, [{"rate": 0.1}, {"rate": 0.3}], [0, 1], train=(X, y),
                                     validation=blobs(40, seed=1), epochs=3, batch_size=16, progress=False)
    for m, n in zip(result.models, arrays.models):
        same_weights(m, n)
    np.testing.assert_array_equal(result.history["val_loss"], arrays.history["val_loss"])


def test_a_dataloader_gives_every_member_its_batches():
    X, y = blobs()
    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    result = reglab.train_population(build, None, [0, 1], train=loader, epochs=2, progress=False)
    for i, m in enumerate(result.members):
        loader.generator.manual_seed(0)   # the same order of batches as the population saw
        model = build()
        reglab.fit(model, loader, epochs=2, seed=m["seed"], preset="keras", progress=False)
        same_weights(model, result.models[i], exact=False)


def test_a_dataset_larger_than_memory_streams(tmp_path):
    """Rows read on demand with positioned reads: the process's peak RSS grows by far less than
    the file's size while it trains an epoch over every row."""
    rows, width = 16384, 2048          # 128 MiB of float32
    X = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float32, shape=(rows, width))
    for start in range(0, rows, 2048):
        X[start:start + 2048] = np.random.default_rng(start).normal(size=(2048, width))
    X.flush()
    del X
    np.save(tmp_path / "y.npy", (np.arange(rows) % 2).astype(np.int64))
    size = rows * width * 4
    script = textwrap.dedent(f"""
        import resource, torch, reglab
        from torch import nn
        from reglab.sources import NpyRows
        ds = NpyRows({str(tmp_path / "X.npy")!r}, {str(tmp_path / "y.npy")!r})
        model = nn.Sequential(nn.Linear({width}, 1))
        reglab.evaluate(model, NpyRows({str(tmp_path / "X.npy")!r}, {str(tmp_path / "y.npy")!r}), batch_size=512)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        h = reglab.fit(model, ds, epochs=1, batch_size=512, task="binary", progress=False)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024, len(h.epoch))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    grown, epochs = map(int, out.stdout.split())
    assert epochs == 1
    assert grown < size / 8, f"peak RSS grew by {grown / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"


def test_npy_rows_reads_what_numpy_stored(tmp_path):
    X = np.arange(60, dtype=np.float64).reshape(10, 2, 3)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", np.arange(10))
    ds = NpyRows(tmp_path / "X.npy", tmp_path / "y.npy")
    x, y = ds[7]
    assert torch.equal(x, torch.from_numpy(X[7].astype(np.float32))) and int(y) == 7
    items = ds.__getitems__([3, 0, 9])
    assert [int(t) for _, t in items] == [3, 0, 9]
    assert torch.equal(items[2][0], torch.from_numpy(X[9].astype(np.float32)))


# --- devices ---------------------------------------------------------------------------------------

def test_device_names_resolve_or_fail_in_one_line():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None, torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="'device' parameter of fit must be 'auto'"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="not available on this machine"):
        resolve_device(f"cuda:{torch.cuda.device_count() + 3}")


def test_fit_and_population_on_the_cpu_by_name():
    X, y = blobs()
    a, b = build(), build()
    reglab.fit(a, (X, y), epochs=2, seed=1, preset="keras", progress=False)
    reglab.fit(b, (X, y), epochs=2, seed=1, preset="keras", progress=False, device="auto" if not torch.cuda.is_available() else "cpu")
    same_weights(a, b)
    with pytest.raises(ValueError, match="device"):
        reglab.train_population(build, None, [0], train=(X, y), epochs=1, device="tpu")


def test_a_study_names_its_device_and_a_bad_one_is_refused(tmp_path):
    from click.testing import CliRunner

    from reglab.cli import main
    from reglab.study import from_dict, StudyError

    raw = {"name": "dev", "seeds": 2, "data": {"name": "moons"}, "training": {"epochs": 2, "device": "cpu"},
           "model": {"layers": ["Dense(8, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]},
           "variants": {"none": {}}}
    study = from_dict(raw)
    cpu_key = study.variants[0].key
    raw["training"]["device"] = "auto"
    assert from_dict(raw).variants[0].key == cpu_key      # where it trains is not part of what it measures
    raw["training"]["device"] = "cuda:31"
    with pytest.raises(StudyError, match="training.device.*not available"):
        from_dict(raw)
    path = tmp_path / "s.toml"
    path.write_text(study_toml(name="dev"))
    db = tmp_path / "r.db"
    res = CliRunner().invoke(main, ["run", str(path), "--db", str(db), "--device", "quantum"])
    assert res.exit_code == 2 and "device" in res.output and "Traceback" not in res.output
    assert not db.exists()
    res = CliRunner().invoke(main, ["run", str(path), "--db", str(db), "--device", "cpu"])
    assert res.exit_code == 0, res.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_member_on_the_gpu_equals_fit_on_the_gpu():
    X, y = blobs()
    result = reglab.train_population(build, [{"rate": 0.1}, {"rate": 0.3}], [0, 1], train=(X, y), epochs=3,
                                     batch_size=16, device="cuda", progress=False)
    for i, m in enumerate(result.members):
        model = build(**m["config"])
        reglab.fit(model, (X, y), epochs=3, batch_size=16, seed=m["seed"], preset="keras", device="cuda", progress=False)
        assert next(model.parameters()).is_cuda
        same_weights(model, result.models[i], exact=False)


# --- studies: [data] factory ----------------------------------------------------------------------

FACTORY = '''
import numpy as np, torch
from torch.utils.data import TensorDataset

def load(n=120, with_validation=False):
    g = np.random.default_rng(0)
    X = g.normal(size=(n, 2)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)
    train = TensorDataset(torch.from_numpy(X[:80]), torch.from_numpy(y[:80]))
    test = (X[80:100], y[80:100])
    if with_validation:
        return {"train": train, "test": test, "validation": (X[100:], y[100:])}
    return train, test

def broken():
    raise RuntimeError("no such table")
'''

STUDY = '''name = "factory"
seeds = 2
[data]
factory = "mydata:{fn}"
{extra}
[training]
epochs = 2
[model]
layers = ["Dense(8, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]
[variants.none]
'''


@pytest.mark.parametrize("extra, val_rows", [("", 16), ("args = { with_validation = true }", 20)])
def test_a_study_reads_its_data_from_a_factory(tmp_path, extra, val_rows):
    from reglab import data as data_mod

    (tmp_path / "mydata.py").write_text(FACTORY)
    ds = data_mod.load({"factory": "mydata:load", **({"args": {"with_validation": True}} if extra else {}),
                        "validation": 0.2}, base_dir=tmp_path)
    assert ds.task == "binary" and ds.X_test.shape == (20, 2) and len(ds.validation()[0]) == val_rows
    assert len(ds.X_train) == 80 - (val_rows if not extra else 0)
    from click.testing import CliRunner

    from reglab.cli import main

    path = tmp_path / "s.toml"
    path.write_text(STUDY.format(fn="load", extra=extra))
    res = CliRunner().invoke(main, ["run", str(path), "--db", str(tmp_path / "r.db")])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("fn, extra, message", [
    ("broken", "", "factory 'mydata:broken' raised RuntimeError: no such table"),
    ("nowhere", "", "has no function 'nowhere'"),
    ("load", "train = 30", "key 'train' does not apply"),
    ("load", "args = { rows = 3 }", "raised TypeError"),
])
def test_a_bad_data_factory_is_one_line_and_exit_2(tmp_path, fn, extra, message):
    from click.testing import CliRunner

    from reglab.cli import main

    (tmp_path / "mydata.py").write_text(FACTORY)
    path = tmp_path / "s.toml"
    path.write_text(STUDY.format(fn=fn, extra=extra))
    db = tmp_path / "r.db"
    res = CliRunner().invoke(main, ["run", str(path), "--db", str(db)])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert not db.exists()


def test_cutmix_on_tabular_data_is_refused_before_anything_runs(tmp_path):
    from click.testing import CliRunner

    from reglab.cli import main

    path = tmp_path / "s.toml"
    path.write_text(study_toml(name="cm", training="epochs = 2\nmixup = { cutmix_alpha = 1.0 }"))
    db = tmp_path / "r.db"
    res = CliRunner().invoke(main, ["run", str(path), "--db", str(db)])
    assert res.exit_code == 2 and "cutmix_alpha > 0" in res.output and "Traceback" not in res.output, res.output
    assert not db.exists()


def test_predict_reads_a_dataset_or_a_loader_in_order():
    X, y = blobs()
    model = build()
    expected = reglab.predict_proba(model, X)
    ds = TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    np.testing.assert_array_equal(reglab.predict_proba(model, ds, batch_size=7),
                                  reglab.predict_proba(model, X, batch_size=7))   # same batches, same bits
    np.testing.assert_array_equal(reglab.predict_proba(model, Rows(X, y)), expected)
    np.testing.assert_array_equal(reglab.predict(model, DataLoader(ds, batch_size=16)), reglab.predict(model, X))


def test_sample_weights_with_a_dataloader_are_refused_in_one_line():
    X, y = blobs()
    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), batch_size=16)
    with pytest.raises(ValueError, match="'sample_weight' parameter of fit needs \\(X, y\\) or a Dataset"):
        reglab.fit(build(), loader, epochs=1, sample_weight=np.ones(len(X)))
    with pytest.raises(ValueError, match="'sample_weight' parameter of train_population needs"):
        reglab.train_population(build, None, [0], train=loader, epochs=1, sample_weight=np.ones(len(X)))
