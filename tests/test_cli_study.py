"""The study commands of the CLI: run / status / list / export / report / demo on tiny studies,
user errors (exit 2, one line, nothing written), and resume after `kill -9` of a real process."""

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from reglab.cli import PUBLISHED, main
from reglab.store import Store

STUDY = """\
name = "cli-study"
question = "Does L2 help the tiny MLP?"
seeds = 2
baseline = "none"

[data]
name = "moons"

[model]
layers = ["Dense(16, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]

[training]
epochs = 6

[variants.none]

[variants.l2]
layers = { 0 = { kernel_regularizer = "l2(0.1)" } }
"""

COLUMNS = {"variant", "params", "seed", "train_accuracy", "test_accuracy", "train_loss", "test_loss", "epochs_run",
           "diverged"}


pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def user_error(result, pattern):
    """Exit code 2, one line 'error: ...' on stderr, no traceback."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert pattern in lines[0], lines[0]
    return lines[0]


def db_files(folder):
    return sorted(p.name for p in folder.iterdir() if ".db" in p.name)


def stored(db, name):
    with Store(db) as store:
        return store.results(store.study(name)["id"])


def test_run_status_list_export_and_report(tmp_path):
    study, db = tmp_path / "study.toml", tmp_path / "s.db"
    study.write_text(STUDY)
    out = ok(invoke("run", study, "--db", db))
    assert "4 members trained, 0 from" in out
    assert "== cli-study (compare, 2 seeds, metric: accuracy) ==" in out and "Does L2 help the tiny MLP?" in out
    header = next(line for line in out.splitlines() if line.startswith("variant"))
    for column in ("train accuracy", "test accuracy", "95% CI (test)", "Δ vs none", "P(better)", "p (Holm)", "verdict"):
        assert column in header
    records = stored(db, "cli-study")
    assert sorted((r["variant"], r["seed"]) for r in records) == [("l2", 0), ("l2", 1), ("none", 0), ("none", 1)]
    table = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["none"], ["l2"])}
    assert "(baseline)" in table["none"]
    assert any(v in table["l2"] for v in ("better", "worse", "no clear difference"))
    for variant, line in table.items():
        test = [r["metrics"]["test_accuracy"] for r in records if r["variant"] == variant]
        mean = sum(test) / 2
        std = abs(test[0] - test[1]) / 2 ** 0.5
        assert f"{mean:.3f} ± {std:.3f}" in line
    # 2 seeds cannot show a difference after Holm: no winner, hence no code to paste
    assert ("winning configuration, as PyTorch code" in out) == ("\nwinner: " in out)
    assert "\nwinner: " in out or "no winner: no variant beats the baseline" in out

    out = ok(invoke("run", study, "--db", db))
    assert "0 members trained, 4 from" in out

    out = ok(invoke("status", "cli-study", "--db", db))
    assert "cli-study: 4 of 4 results over the 2 seed(s) run so far" in out
    assert [line.split() for line in out.splitlines()[1:]] == [["none", "2/2"], ["l2", "2/2"]]

    out = ok(invoke("list", "--db", db))
    assert out.split()[:3] == ["cli-study", "4", "results"]

    by_key = {(r["variant"], r["seed"]): r for r in records}
    rows = list(csv.DictReader(io.StringIO(ok(invoke("export", "cli-study", "--db", db, "--format", "csv")))))
    assert len(rows) == 4 and COLUMNS <= set(rows[0])
    assert {(row["variant"], int(row["seed"])) for row in rows} == set(by_key)
    for row in rows:
        record = by_key[(row["variant"], int(row["seed"]))]
        assert json.loads(row["params"]) == record["params"] == {}
        assert float(row["test_accuracy"]) == record["metrics"]["test_accuracy"]
        assert float(row["train_loss"]) == record["metrics"]["train_loss"]
        assert int(row["epochs_run"]) == 6 and row["diverged"] == "False"

    rows = json.loads(ok(invoke("export", "cli-study", "--db", db, "--format", "json")))
    assert len(rows) == 4 and all(COLUMNS <= set(row) for row in rows)
    for row in rows:
        record = by_key[(row["variant"], row["seed"])]
        assert row["test_accuracy"] == record["metrics"]["test_accuracy"] and row["diverged"] is False

    target = tmp_path / "export.csv"
    assert ok(invoke("export", "cli-study", "--db", db, "--out", target)) == ""
    assert len(list(csv.DictReader(target.open()))) == 4

    report = tmp_path / "report" / "nested"
    ok(invoke("report", "cli-study", "--db", db, "--out", report))
    assert {"results.csv", "results.json", "summary.md"} <= {p.name for p in report.iterdir()}
    summary_md = (report / "summary.md").read_text()
    assert summary_md.startswith("# cli-study") and "Δ vs none" in summary_md and "Does L2 help" in summary_md
    payload = json.loads((report / "results.json").read_text())
    assert payload["summary"]["baseline"] == "none" and [r["variant"] for r in payload["summary"]["rows"]] == ["none", "l2"]
    assert len(payload["records"]) == 4 and COLUMNS <= set(payload["records"][0])
    assert len(list(csv.DictReader((report / "results.csv").open()))) == 4


def test_more_seeds_train_only_the_new_ones_and_a_changed_study_is_refused(tmp_path):
    study, db = tmp_path / "study.toml", tmp_path / "s.db"
    study.write_text(STUDY)
    assert "4 members trained, 0 from" in ok(invoke("run", study, "--db", db, "--seeds", "2"))
    assert "2 members trained, 4 from" in ok(invoke("run", study, "--db", db, "--seeds", "3"))
    out = ok(invoke("status", "cli-study", "--db", db))
    assert "cli-study: 6 of 6 results over the 3 seed(s) run so far" in out
    assert [line.split() for line in out.splitlines()[1:]] == [["none", "3/3"], ["l2", "3/3"]]
    keys = [(r["config_key"], r["seed"]) for r in stored(db, "cli-study")]
    assert len(keys) == len(set(keys)) == 6

    study.write_text(STUDY.replace("epochs = 6", "epochs = 7"))
    user_error(invoke("run", study, "--db", db), "already exists in s.db with a different definition")
    assert len(stored(db, "cli-study")) == 6


CSV_STUDY = STUDY.replace('name = "moons"', 'name = "csv"\npath = "d.csv"\nlabel = "y"').replace("input_dim=2, ", "")

REJECTED = {
    "unknown key": (STUDY.replace("seeds = 2", "seeds = 2\nepochs = 3"), "study: unknown key 'epochs'"),
    "unknown regularizer": (STUDY.replace("l2(0.1)", "l3(0.1)"), "Unknown penalty 'l3'"),
    "bad TOML": (STUDY + "[variants.x\n", "is not valid TOML"),
    "Conv2D on flat data": (STUDY.replace("Dense(16, input_dim=2, activation='relu')", "Conv2D(4, 3)"),
                            "Conv2D needs samples of shape (channels, height, width)"),
    "early stopping on a metric not logged": (STUDY.replace("epochs = 6", "epochs = 6\nearly_stopping = { monitor = 'acc' }"),
                                              "early_stopping monitors 'acc'"),
    "missing CSV": (CSV_STUDY.replace("d.csv", "missing.csv"), "missing.csv: file not found"),
    "missing label column": (CSV_STUDY.replace('label = "y"', 'label = "class"'), "'class'"),
    "non-numeric cell": (CSV_STUDY.replace("d.csv", "bad.csv"), "bad.csv"),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_a_rejected_study_or_bad_data_writes_nothing(case, tmp_path):
    text, pattern = REJECTED[case]
    (tmp_path / "d.csv").write_text("a,b,y\n" + "".join(f"{i / 10},{i % 3},{i % 2}\n" for i in range(40)))
    (tmp_path / "bad.csv").write_text("a,b,y\n1,2,0\n3,four,1\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(40)))
    study = tmp_path / "study.toml"
    study.write_text(text)
    user_error(invoke("run", study, "--db", tmp_path / "x.db"), pattern)
    assert db_files(tmp_path) == []


def test_a_missing_study_file_writes_nothing(tmp_path):
    user_error(invoke("run", tmp_path / "nope.toml", "--db", tmp_path / "x.db"), "does not exist")
    assert db_files(tmp_path) == []


def test_database_and_output_errors_exit_2(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    junk = tmp_path / "junk.db"
    junk.write_text("this is not a database\n" * 10)
    for args in (["list"], ["status", "cli-study"], ["export", "cli-study"], ["report", "cli-study", "--out", tmp_path / "r"],
                 ["run", study]):
        user_error(invoke(*args, "--db", junk), "junk.db is not a reglab database (not SQLite)")
    assert junk.read_text() == "this is not a database\n" * 10 and not (tmp_path / "r").exists()
    user_error(invoke("run", study, "--db", tmp_path / "no" / "such" / "x.db"), "does not exist")

    db = tmp_path / "s.db"
    ok(invoke("run", study, "--db", db, "--seeds", "1", "--epochs", "2"))
    for command in ("status", "export", "report"):
        user_error(invoke(command, "nope", "--db", db), "no study 'nope'")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    user_error(invoke("report", "cli-study", "--db", db, "--out", a_file / "sub"), "cannot create the report folder")
    user_error(invoke("export", "cli-study", "--db", db, "--out", tmp_path / "missing" / "x.csv"),
               "does not exist; create it or choose another --out")
    assert not (tmp_path / "missing").exists()


def test_demo_prints_every_case_study_with_the_seeds_figures(tmp_path):
    result = invoke("demo", "--seeds", "2", "--epochs", "3", "--db", tmp_path / "demo.db")
    out = ok(result)
    sections = {}
    for chunk in out.split("\n== ")[1:]:
        sections[chunk.split(" ", 1)[0]] = chunk
    assert set(sections) == {"moons-l2", "moons-l2-grid", "moons-unit-norm", "circles-activity", "circles-activity-grid",
                             "digits-toolbox", "resmlp-toolbox"}
    for name, figures in PUBLISHED.items():
        assert f"{name} (" in out and "2 seeds" in sections[name].splitlines()[0]
        lines = sections[name].splitlines()
        for variant, (train, test) in figures.items():
            row = next((line for line in lines if line.split()[:1] == [variant]), None)
            assert row is not None, (name, variant)
            assert row.endswith(f"| train {train:.3f} / test {test:.3f}"), row
    assert "demo finished" in out
    with Store(tmp_path / "demo.db") as store:
        assert [s["name"] for s in store.studies()] == list(PUBLISHED) + ["digits-toolbox", "resmlp-toolbox"]


KILL_STUDY = """\
name = "killed"
seeds = 2

[data]
name = "moons"

[model]
layers = ["Dense(8, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]

[training]
epochs = 40
batch_size = 4

[variants.fast]
training = { epochs = 2 }

[variants.slow_a]

[variants.slow_b]
training = { batch_size = 5 }
"""


def _count(db):
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM results").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0                   # not created yet, or locked for a moment


def test_kill_9_after_the_first_population_then_resume(tmp_path):
    """Three training groups (different training tables) are three populations, each saved in one
    transaction. Kill the real process once the first is saved; a second run completes the rest."""
    study, db = tmp_path / "study.toml", tmp_path / "k.db"
    study.write_text(KILL_STUDY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(tmp_path / "child.log", "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "reglab.cli", "run", str(study), "--db", str(db)],
                                 stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 300
            while (not db.exists() or _count(str(db)) == 0) and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert child.poll() is None, "the run ended before it could be killed:\n" + (tmp_path / "child.log").read_text()
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    counts = dict(con.execute("SELECT variant, count(*) FROM results GROUP BY variant").fetchall())
    con.close()
    assert counts.get("fast") == 2, counts                       # the first population was saved whole
    assert sum(counts.values()) < 6 and set(counts.values()) <= {2}, counts   # no population saved in part

    before = sum(counts.values())
    out = ok(invoke("run", study, "--db", db))
    assert f"{6 - before} members trained, {before} from" in out

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    pairs = con.execute("SELECT variant, seed, count(*) FROM results GROUP BY variant, seed ORDER BY variant, seed").fetchall()
    con.close()
    assert pairs == [(v, s, 1) for v in ("fast", "slow_a", "slow_b") for s in (0, 1)]


# -- status: every variant in the store, counted by SQL ----------------------------------------------

GRID = """\
name = "grid-status"
protocol = "grid"
seeds = 2

[data]
name = "moons"

[model]
layers = ["Dense(8, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]

[training]
epochs = 5

[grid]
variant = { layers = { 0 = { kernel_regularizer = "l2({value})" } } }
values = [1e-1, 1e-2, 1e-3]
refine_points = 5
"""


def status_lines(db, name):
    out = ok(invoke("status", name, "--db", db)).splitlines()
    return out[0], {line.split()[0]: line.split()[1:] for line in out[1:]}


def test_status_of_a_refined_grid_lists_the_refined_strengths_and_counts_them(tmp_path):
    study, db = tmp_path / "grid.toml", tmp_path / "g.db"
    study.write_text(GRID)
    out = ok(invoke("run", study, "--db", db))
    records = stored(db, "grid-status")
    variants = {r["variant"] for r in records}
    refined = variants - {"none", "0.1", "0.01", "0.001"}
    assert refined, out                       # the refinement added strengths after the first grid
    header, lines = status_lines(db, "grid-status")
    n = len(variants) * 2
    assert header == f"grid-status: {len(records)} of {n} results over the 2 seed(s) run so far"
    assert len(records) == n
    assert set(lines) == variants
    for name, rest in lines.items():
        assert rest == (["(refined)", "2/2"] if name in refined else ["2/2"]), (name, rest)
    strengths = [float(name) for name in lines if name != "none"]
    assert list(lines)[0] == "none" and strengths == sorted(strengths)   # by strength, as the report


def _grid_store(db, seeds, refined=(), missing=None, diverged=lambda value, seed: False, history=3):
    """A grid study saved through the store's API, as a run would leave it, without training:
    ``seeds`` for every declared strength, ``refined`` strengths added after the grid, and for
    the strengths in ``missing`` only that many seeds."""
    import tomllib

    from reglab.study import spec

    study = spec.from_dict(tomllib.loads(GRID))
    variants = study.variants + (spec.grid_variants(study, {"value": list(refined)},
                                                    only=[{"value": v} for v in refined]) if refined else [])
    missing = missing or {}
    records = [{"variant": v.name, "config_key": v.key, "params": v.params, "seed": seed,
                "metrics": {"train_accuracy": 1.0, "test_accuracy": 0.9}, "epochs_run": 5,
                "diverged": diverged(v.params.get("value"), seed),
                "history": {"loss": [0.5] * history, "val_loss": [0.6] * history, "epoch": list(range(history))}}
               for v in variants for seed in range(missing.get(v.params.get("value"), seeds))]
    with Store(db) as store:
        sid = store.open_study(study.name, study.as_dict())
        store.save(sid, records)
    return study, variants, sid, len(records)


def test_status_on_100000_records_counts_every_variant_without_reading_a_record(tmp_path, monkeypatch):
    db = tmp_path / "big.db"
    # 4 declared variants x 15,000 seeds + 4 refined strengths (15,000, 15,000, 9,000, 1,000 seeds)
    _, variants, _, n_records = _grid_store(
        db, 15_000, refined=[0.00178, 0.00316, 0.00562, 0.0316], missing={0.00562: 9_000, 0.0316: 1_000},
        diverged=lambda value, seed: value == 0.1 and seed % 1000 == 0)
    assert n_records == 100_000
    with Store(db) as store:   # a second study in the same file is not counted
        store.save(store.open_study("other", {"x": 1}), [
            {"variant": "none", "config_key": "none", "params": {}, "seed": s, "metrics": {}, "epochs_run": 1,
             "diverged": False, "history": {}} for s in range(20_000, 20_003)])

    def no_records(*args, **kwargs):
        raise AssertionError("status decoded the records")

    monkeypatch.setattr(Store, "results", no_records)
    header, lines = status_lines(db, "grid-status")
    assert header == "grid-status: 100000 of 120000 results over the 15000 seed(s) run so far"
    assert list(lines) == ["none", "0.001", "0.00178", "0.00316", "0.00562", "0.01", "0.0316", "0.1"]
    expected = {"0.00178": ["(refined)", "15000/15000"], "0.00316": ["(refined)", "15000/15000"],
                "0.00562": ["(refined)", "9000/15000"], "0.0316": ["(refined)", "1000/15000"],
                "0.1": ["15000/15000", "(15", "diverged)"]}
    for name, rest in lines.items():
        assert rest == expected.get(name, ["15000/15000"]), (name, rest)


def test_status_does_not_import_the_study_code(tmp_path):
    """status reads the stored spec as JSON: reglab.study (scipy, the data loaders) stays unloaded,
    so the command costs the SQL counts and Python's start, not a second of imports."""
    db = tmp_path / "g.db"
    _grid_store(db, 2, refined=[0.00316])
    code = ("import sys\nfrom reglab.cli import main\ntry:\n    main(['status', 'grid-status', '--db', sys.argv[1]])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('reglab.study', 'reglab.data'))))")
    out = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "grid-status: 10 of 10 results over the 2 seed(s) run so far" and "(refined)" in lines[3]
    assert lines[-1] == "[]", lines[-1]


def test_status_of_a_grid_before_its_refinement_and_of_a_running_study(tmp_path):
    db = tmp_path / "g.db"
    study, variants, sid, n = _grid_store(db, 3, missing={0.001: 1})
    header, lines = status_lines(db, "grid-status")
    assert header == "grid-status: 10 of 12 results over the 3 seed(s) run so far (grid refinement may add more)"
    assert lines["0.001"] == ["1/3"] and lines["none"] == ["3/3"] and len(lines) == 4

    # an earlier run refined 3 strengths on seeds 0 and 1; the running one plans seeds 0-2
    refined = [0.00178, 0.00316, 0.00562]
    with Store(db) as store:
        from reglab.study import spec

        extra = spec.grid_variants(study, {"value": refined}, only=[{"value": v} for v in refined])
        store.save(sid, [{"variant": v.name, "config_key": v.key, "params": v.params, "seed": s, "metrics": {},
                          "epochs_run": 5, "diverged": False, "history": {}} for v in extra for s in (0, 1)])
        with store.lease(sid, {"seeds": [0, 1, 2], "members": 12}):
            first = ok(invoke("status", "grid-status", "--db", db)).splitlines()
            store.plan_run(sid, {"seeds": [0, 1, 2], "members": 21})   # the run planned its refinement
            second = ok(invoke("status", "grid-status", "--db", db)).splitlines()
    pid = os.getpid()
    assert first[0].startswith(f"grid-status: running (pid {pid} on ") and first[0].endswith(": 10 of 12 members finished")
    assert second[0].endswith(": 16 of 21 members finished")
    assert [line.split() for line in second[1:]][2:5] == [["0.00178", "(refined)", "2/3"], ["0.00316", "(refined)", "2/3"],
                                                          ["0.00562", "(refined)", "2/3"]]
    header, _ = status_lines(db, "grid-status")
    assert header == "grid-status: 16 of 21 results over the 3 seed(s) run so far"   # the run ended


# -- a refused study leaves no trace --------------------------------------------------------------

FACTORIES = '''\
import torch
from torch import nn


def raises():
    raise RuntimeError("no model today")


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x):
        return self.linear(x + torch.randn_like(x) if self.training else x)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x):
        return self.linear(x) if x.sum() > 0 else -self.linear(x)


def random_in_forward():
    return Noisy()


def data_dependent():
    return Branchy()


def three_outputs():
    return nn.Sequential(nn.Linear(2, 3))


class WithExtra(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x):
        return self.linear(x), x


def returns_a_tuple():
    return WithExtra()


def in_float64():
    return nn.Sequential(nn.Linear(2, 1)).double()


CALLS = [0]


def only_once():
    CALLS[0] += 1
    if CALLS[0] > 1:
        raise RuntimeError("called twice")
    return nn.Sequential(nn.Linear(2, 1))
'''


def _factory_study(function):
    return STUDY.replace("""layers = ["Dense(16, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]""",
                         f'factory = "refused_factories:{function}"').replace(
        """layers = { 0 = { kernel_regularizer = "l2(0.1)" } }""", "")


REFUSED = {
    "the factory raises": (_factory_study("raises"), "raised RuntimeError: no model today (refused_factories.py, line 6)"),
    "a model that draws random numbers in forward()": (_factory_study("random_in_forward"),
                                                       "Noisy draws random numbers in forward()"),
    "a model with data-dependent control flow": (_factory_study("data_dependent"),
                                                 "Branchy cannot run as a population under torch.func.vmap"),
    "a factory that fails when called again": (_factory_study("only_once"), "raised RuntimeError: called twice"),
    "a model whose output does not fit": (_factory_study("three_outputs"), "the model does not fit the data"),
    "a model whose forward returns a tuple": (_factory_study("returns_a_tuple"),
                                              "returned a tuple, not a tensor; reglab trains on one tensor of predictions"),
    "a model in float64": (_factory_study("in_float64"), "variants.none: the model's 0.weight is float64, but reglab "
                                                         "trains in the default dtype, float32: build the model in float32"),
    "layer lines that fail when built": (REJECTED["Conv2D on flat data"]),
    "bad data": (REJECTED["non-numeric cell"]),
}


@pytest.mark.parametrize("existing", [False, True], ids=["no database", "existing database"])
@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_study_leaves_no_trace_in_the_database(case, existing, tmp_path, monkeypatch):
    """`reglab run` refuses the study with one line before the database is touched: a missing
    database is not created (nor its lock file), an existing one gains no study, run or result."""
    text, pattern = REFUSED[case]
    (tmp_path / "refused_factories.py").write_text(FACTORIES)
    monkeypatch.delitem(sys.modules, "refused_factories", raising=False)   # a fresh call count per test
    (tmp_path / "bad.csv").write_text("a,b,y\n1,2,0\n3,four,1\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(40)))
    study, db = tmp_path / "study.toml", tmp_path / "x.db"
    study.write_text(text)
    if existing:
        with Store(db) as store:
            store.save(store.open_study("earlier", {"x": 1}), [
                {"variant": "none", "config_key": "none", "params": {}, "seed": 0, "metrics": {"test_accuracy": 0.5},
                 "epochs_run": 1, "diverged": False, "history": {}}])
        before = db_files(tmp_path)
    user_error(invoke("run", study, "--db", db), pattern)
    monkeypatch.delitem(sys.modules, "refused_factories", raising=False)
    if not existing:
        assert db_files(tmp_path) == []
        return
    assert db_files(tmp_path) == before
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT name FROM studies").fetchall() == [("earlier",)]
        assert con.execute("SELECT count(*) FROM results").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    finally:
        con.close()


DECLARED = {
    "compare": STUDY,
    "compare, [[variants]]": STUDY.replace("[variants.none]", '[[variants]]\nname = "none"').replace(
        "[variants.l2]", '[[variants]]\nname = "l2"'),
    "repeat without variants": STUDY.replace("[variants.none]", "").replace("[variants.l2]\n", "").replace(
        'layers = { 0 = { kernel_regularizer = "l2(0.1)" } }\n', "").replace('baseline = "none"', 'protocol = "repeat"'),
    "grid": GRID,
    "grid of the default decades without none": GRID.replace("values = [1e-1, 1e-2, 1e-3]", "include_none = false"),
    "grid of two strengths": GRID.replace('"l2({value})"', '"l1_l2(l1={a}, l2={b})"').replace(
        "values = [1e-1, 1e-2, 1e-3]", "values = { a = [0.1, 1e-5], b = [2.5, 3] }"),
}


@pytest.mark.parametrize("case", list(DECLARED))
def test_status_names_the_declared_variants_as_the_study_does(case):
    """status reads the variants from the stored spec without reglab.study; the names must agree."""
    import tomllib

    from reglab.cli import _declared
    from reglab.study import spec

    study = spec.from_dict(tomllib.loads(DECLARED[case]))
    assert _declared(study.as_dict()) == [(v.name, v.params) for v in study.variants]
