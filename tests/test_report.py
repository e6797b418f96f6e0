"""Reports: figures as PNG and SVG, one self-contained index.html with every user text escaped, the
plain files, and which figures each kind of study gets."""

import base64
import csv
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats as sp

from reglab.cli import main
from reglab.report import boundary, figures, write_report
from reglab.report.context import BASELINE_COLOUR, palette
from reglab.study.text import seeds_text
from reglab.store import Store
from reglab.study import runner
from report_helpers import EVIL, compare_study, grid_study, iris_study, run_all

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reports(tmp_path_factory, one_thread):
    """Four tiny studies trained once, and their reports."""
    root = tmp_path_factory.mktemp("reports")
    db = root / "studies.db"
    studies = [compare_study(), grid_study({"l1": [1e-4, 1e-2], "l2": [1e-4, 1e-3, 1e-2]}, "tiny-grid2",
                                           template="l1_l2(l1={l1}, l2={l2})"),
               grid_study([1e-4, 1e-3, 1e-2, 1e-1], "tiny-grid1"), iris_study()]
    runs = run_all(db, *studies)
    out = {}
    for raw in studies:
        folder = root / raw["name"]
        out[raw["name"]] = {"paths": write_report(raw["name"], db, folder), "folder": folder, "run": runs[raw["name"]]}
    return {"db": db, "reports": out}


def _figure_keys(folder):
    return {p.stem for p in (folder / "figures").glob("*.png")}


class _Page(HTMLParser):
    """Collects tags with attributes, the stats table's body rows and all text."""

    def __init__(self):
        super().__init__()
        self.tags, self.rows, self._table, self._in_body, self._row, self._cell = [], [], None, False, None, None
        self.scripts = []
        self._script = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = attrs.get("id")
        elif tag == "tbody" and self._table == "stats":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ""
        elif tag == "script":
            self._script = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "script":
            self.scripts.append(self._script)
            self._script = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._script is not None:
            self._script += data


def _page(folder):
    parser = _Page()
    parser.feed((folder / "index.html").read_text(encoding="utf-8"))
    return parser


# ------------------------------------------------------------------------------------- figures


def test_compare_study_writes_its_figures_as_png_and_svg(reports):
    r = reports["reports"]["tiny-compare"]
    folder = r["folder"]
    assert _figure_keys(folder) == {"learning_curves", "per_seed", "decision_boundaries", "weight_norms", "sparsity"}
    for key in _figure_keys(folder):
        png = (folder / "figures" / f"{key}.png").read_bytes()
        svg = (folder / "figures" / f"{key}.svg").read_text(encoding="utf-8")
        assert png.startswith(PNG_MAGIC) and len(png) > 5000, key
        assert "<svg" in svg and len(svg) > 5000, key
    assert r["paths"][0].name == "index.html"
    assert all(p.exists() for p in r["paths"])
    assert {p.name for p in r["paths"]} >= {"index.html", "summary.md", "results.csv", "results.json",
                                            "learning_curves.png", "learning_curves.svg"}
    assert not list(folder.rglob("*.tmp*"))


def test_each_variant_keeps_its_colour_across_figures(reports):
    run = reports["reports"]["tiny-compare"]["run"]
    colours = palette([v.name for v in run.study.variants], run.study.baseline)
    folder = reports["reports"]["tiny-compare"]["folder"] / "figures"
    for key in ("learning_curves", "per_seed", "weight_norms", "sparsity"):
        svg = (folder / f"{key}.svg").read_text(encoding="utf-8").lower()
        for name, colour in colours.items():
            assert colour in svg, (key, name, colour)


def test_grid_of_two_strengths_gets_a_heat_map_and_no_validation_curve(reports):
    keys = _figure_keys(reports["reports"]["tiny-grid2"]["folder"])
    assert "heat_map" in keys and "validation_curve" not in keys
    assert "decision_boundaries" in keys          # moons is 2-D


def test_grid_of_one_strength_gets_a_validation_curve_and_no_heat_map(reports):
    r = reports["reports"]["tiny-grid1"]
    keys = _figure_keys(r["folder"])
    assert "validation_curve" in keys and "heat_map" not in keys
    html = (r["folder"] / "index.html").read_text(encoding="utf-8")
    grid = r["run"].summary["grid"]
    assert f"Best strength <b>{grid['best']:g}</b>" in html and f"<b>{grid['one_se']:g}</b>" in html


def test_decision_boundaries_only_for_two_dimensional_data(reports):
    r = reports["reports"]["tiny-iris"]
    assert r["run"].dataset.X_train.shape[1] == 4
    keys = _figure_keys(r["folder"])
    assert "decision_boundaries" not in keys
    assert {"learning_curves", "per_seed", "weight_norms", "sparsity"} <= keys
    assert "fig-decision_boundaries" not in (r["folder"] / "index.html").read_text(encoding="utf-8")


def test_retrained_member_reproduces_the_stored_one(reports):
    """The decision boundaries re-train seed 0 of each variant; it must be the member the study stored."""
    run = reports["reports"]["tiny-compare"]["run"]
    from reglab.training import evaluate

    seed = run.study.seeds[0]
    models = boundary.retrain(run, [v.name for v in run.study.variants], seed)
    ds = run.dataset
    for v in run.study.variants:
        model, task = models[v.name]
        stored = next(r for r in run.records if r["variant"] == v.name and r["seed"] == seed)
        got = evaluate(model, (ds.X_test, ds.y_test), task=task)
        assert got["accuracy"] == pytest.approx(stored["metrics"]["test_accuracy"], abs=1e-9), v.name
        assert got["loss"] == pytest.approx(stored["metrics"]["test_loss"], rel=1e-5), v.name
    caption = (reports["reports"]["tiny-compare"]["folder"] / "index.html").read_text(encoding="utf-8")
    assert "reproduced its stored test score exactly" in caption


# ---------------------------------------------------------------------------------------- HTML


def test_index_html_is_self_contained(reports):
    for name, r in reports["reports"].items():
        html = (r["folder"] / "index.html").read_text(encoding="utf-8")
        page = _page(r["folder"])
        for tag, attrs in page.tags:
            for attr in ("src", "href", "srcset", "action", "data"):
                value = (attrs.get(attr) or "").strip().lower()
                assert not re.match(r"^(https?:)?//", value), (name, tag, attr, value)
                if attr == "href" and value:
                    assert value.startswith("#"), (name, value)      # only links within the page
            assert tag not in ("link", "iframe", "object", "embed", "base"), (name, tag)
            if tag == "script":
                assert "src" not in attrs, name
        assert "@import" not in html and "url(" not in html, name
        images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
        assert len(images) == len(_figure_keys(r["folder"])), name
        for src in images:
            assert src.startswith("data:image/png;base64,"), name
            assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
        assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_csp_allows_exactly_the_inline_script(reports):
    import hashlib

    page = _page(reports["reports"]["tiny-compare"]["folder"])
    assert len(page.scripts) == 1
    digest = base64.b64encode(hashlib.sha256(page.scripts[0].encode()).digest()).decode()
    csp = next(a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert f"script-src 'sha256-{digest}'" in csp


def test_user_text_is_escaped(reports):
    r = reports["reports"]["tiny-compare"]
    html = (r["folder"] / "index.html").read_text(encoding="utf-8")
    assert EVIL not in html and "alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&amp; &quot;quotes&quot;" in html             # the question, attribute-safe
    assert html.count("<script") == 1                      # only the sorting script
    page = _page(r["folder"])
    assert EVIL in [row[0] for row in page.rows]           # the name is shown, as text


def test_stats_table_has_one_row_per_variant_with_verdicts(reports):
    for name, r in reports["reports"].items():
        run = r["run"]
        page = _page(r["folder"])
        shown = [row[0] for row in page.rows]
        assert sorted(shown) == sorted(v.name for v in run.study.variants) and len(set(shown)) == len(shown), name
        verdicts = {row["variant"]: row.get("verdict", "") for row in run.summary["rows"]}
        for row in page.rows:
            assert verdicts[row[0]] in row, name
    html = (reports["reports"]["tiny-compare"]["folder"] / "index.html").read_text(encoding="utf-8")
    for section in ("answer", "setup", "statistics", "diagnosis", "snippet", "figures", "provenance"):
        assert f'<section id="{section}">' in html
    summary = reports["reports"]["tiny-compare"]["run"].summary
    if summary.get("winner"):                             # the winning snippet
        assert "import reglab" in html and "(better than" in html
    else:                                                 # no variant beat the baseline: no snippet to paste
        assert "No winner: no variant beats the baseline" in html and "The best is" in html
    from importlib.metadata import version

    assert torch.__version__ in html and np.__version__ in html and f"reglab {version('reglab')}" in html
    assert "0, 1" in html or "0–1" in html                 # the seeds


def test_plain_files(reports):
    r = reports["reports"]["tiny-compare"]
    run, folder = r["run"], r["folder"]
    summary = (folder / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("# tiny-compare") and "figures/learning_curves.png" in summary
    rows = list(csv.DictReader(io.StringIO((folder / "results.csv").read_text(encoding="utf-8"))))
    assert len(rows) == len(run.study.variants) * len(run.study.seeds)
    assert {"variant", "params", "seed", "train_accuracy", "test_accuracy", "train_loss", "test_loss", "epochs_run",
            "diverged"} <= set(rows[0])
    assert {row["variant"] for row in rows} == {v.name for v in run.study.variants}
    text = (folder / "results.json").read_text(encoding="utf-8")
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert len(data["records"]) == len(rows) and data["summary"]["study"] == "tiny-compare"


def test_report_command_and_errors(reports, tmp_path):
    result = CliRunner().invoke(main, ["report", "tiny-iris", "--db", str(reports["db"]), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "index.html").exists() and (tmp_path / "r" / "figures" / "per_seed.svg").exists()
    assert "index.html" in result.output
    missing = CliRunner().invoke(main, ["report", "nope", "--db", str(reports["db"]), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "nope" in missing.output and "Traceback" not in missing.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot create the report folder"):
        write_report("tiny-grid1", reports["db"], blocker / "sub")


# ------------------------------------------------------------------------------------- helpers


def test_palette_gives_the_baseline_grey_and_every_variant_its_own_colour():
    names = ["a", "none", "b", "c"]
    colours = palette(names, "none")
    assert colours["none"] == BASELINE_COLOUR and len(set(colours.values())) == 4
    assert palette(names, "none") == colours                        # deterministic
    ordered = palette(["none", "1e-3", "1e-1", "1e-5"], "none", {"1e-3": 1e-3, "1e-1": 1e-1, "1e-5": 1e-5})
    assert len(set(ordered.values())) == 4 and ordered["none"] == BASELINE_COLOUR


def test_mean_ci_matches_scipy_and_ignores_missing_values():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(7, 3))
    m[2, 1] = np.nan
    mean, low, high = figures.mean_ci(m)
    for j in range(3):
        col = m[:, j][np.isfinite(m[:, j])]
        lo, hi = sp.t.interval(0.95, len(col) - 1, loc=col.mean(), scale=sp.sem(col))
        assert mean[j] == pytest.approx(col.mean()) and low[j] == pytest.approx(lo) and high[j] == pytest.approx(hi)
    single = figures.mean_ci(np.array([[1.0, np.nan], [np.nan, np.nan]]))
    assert single[0][0] == 1.0 and np.isnan(single[1][0]) and np.isnan(single[0][1])


def test_aligned_curves_pad_runs_that_stopped_early():
    records = [{"history": {"epoch": [0, 1, 2, 3], "loss": [4.0, 3.0, 2.0, 1.0]}},
               {"history": {"epoch": [0, 1], "loss": [5.0, 4.0]}}]
    grid, rows = figures._aligned(records, "loss")
    assert grid.tolist() == [0, 1, 2, 3]
    assert rows[0].tolist() == [4.0, 3.0, 2.0, 1.0]
    assert rows[1][:2].tolist() == [5.0, 4.0] and np.isnan(rows[1][2:]).all()


def test_dodge_spreads_equal_values_and_leaves_single_ones_centred():
    offsets = figures._dodge([0.9, 0.9, 0.9, 0.8])
    assert offsets[3] == 0 and len(set(offsets[:3].round(6))) == 3 and offsets[:3].sum() == pytest.approx(0)


def test_user_text_cannot_start_mathtext():
    assert figures.tex("cost $5 and $6") == r"cost \$5 and \$6"
    assert seeds_text(range(5)) == "0–4" and seeds_text([0, 2]) == "0, 2"


def test_chosen_panels_for_a_grid_are_none_best_one_se_and_strongest(reports):
    run = reports["reports"]["tiny-grid1"]["run"]
    from reglab.report.context import Context

    ctx = Context.of(run)
    names = boundary.chosen(ctx)
    grid = run.summary["grid"]
    assert names[0] == "none"
    assert f"{grid['best']:g}" in names and f"{grid['one_se']:g}" in names and "0.1" in names
    assert len(names) == len(set(names))


def test_report_reads_the_study_from_the_database_alone(reports, tmp_path):
    """from_store gives the same summary as the run that trained it (the report does not need the file)."""
    with Store(reports["db"]) as store:
        loaded = runner.from_store(store, "tiny-compare")
    original = reports["reports"]["tiny-compare"]["run"]
    assert sorted(r["variant"] for r in loaded.summary["rows"]) == sorted(r["variant"] for r in original.summary["rows"])
    assert loaded.summary["baseline"] == "none"
    by_name = {r["variant"]: r for r in original.summary["rows"]}
    for row in loaded.summary["rows"]:
        assert row["test"] == pytest.approx(by_name[row["variant"]]["test"], nan_ok=True)


def test_layers_line_up_when_a_variant_inserts_one(reports):
    """iris's dropout variant inserts a Dropout after layer 0: its second Linear is module 3, the
    baseline's module 2; the figures compare them as the same (second) weighted layer."""
    from reglab.report.context import Context

    run = reports["reports"]["tiny-iris"]["run"]
    ctx = Context.of(run)
    layers, values, labels, shifted = figures._layer_values(ctx, "weight_norms", "l2")
    assert layers == [0, 1] and shifted
    assert labels == {0: "0: Linear", 1: "2: Linear"}
    assert all(len(values[n][k]) == len(run.study.seeds) for n in ctx.names for k in layers)
    html = (reports["reports"]["tiny-iris"]["folder"] / "index.html").read_text(encoding="utf-8")
    assert "matched by their order in the model" in html
