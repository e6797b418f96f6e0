"""index.html: one self-contained page (figures inlined as PNG data, no network, no external fonts or
scripts). Every piece of user text goes through :func:`e` (``html.escape``); a Content-Security-Policy
allows only the page's own sorting script (by its hash) and inline images, so even a name that slipped
past escaping could not run script or fetch anything.

>>> e('<script>alert("x")</script>')
'&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;'
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import platform
from datetime import datetime, timezone

from ..study.text import ci as _ci
from ..study.text import divergence, fmt, paired_note, runs, seeds_text, verdict_text
from ..study.text import pm as _pm
from ..study.text import rise as _rise
from .context import Context


def e(text) -> str:
    return html.escape(str(text), quote=True)


SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.tabIndex = 0;
    function sort() {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      function key(row) {
        var cell = row.cells[col], v = cell.getAttribute('data-sort');
        if (v === null) { v = cell.textContent.trim(); }
        var x = parseFloat(v);
        return isNaN(x) ? v.toLowerCase() : x;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    }
    th.addEventListener('click', sort);
    th.addEventListener('keydown', function (ev) { if (ev.key === 'Enter') { sort(); } });
  });
});
"""

CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #d9d9de; --bg-soft: #f5f6f8; --good: #1b7a3a; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 1.5rem 1.5rem 4rem; }
h1 { font-size: 1.7rem; margin: 0 0 .3rem; overflow-wrap: anywhere; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 .7rem; padding-bottom: .25rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.02rem; margin: 1.2rem 0 .4rem; }
.question { font-size: 1.15rem; margin: .4rem 0 .6rem; overflow-wrap: anywhere; }
.meta, .muted, figcaption { color: var(--muted); }
.answer { background: var(--bg-soft); border-left: 4px solid #3a7ebf; padding: .7rem 1rem; margin: 1rem 0; }
.answer p { margin: .25rem 0; }
.running { background: #fff4e5; border-left: 4px solid #e08a00; padding: .5rem 1rem; margin: 1rem 0; color: #222; }
nav { font-size: .9rem; margin: .8rem 0; }
nav a { margin-right: 1rem; color: #2b5d9b; text-decoration: none; white-space: nowrap; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .86rem; margin: .4rem 0; font-variant-numeric: tabular-nums; }
th, td { padding: .3rem .45rem; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
th { background: var(--bg-soft); font-weight: 600; white-space: nowrap; }
th.wrap { white-space: normal; }
td { white-space: nowrap; }
td.text, th.text { text-align: left; white-space: normal; }
td.name { overflow-wrap: anywhere; min-width: 7rem; max-width: 16rem; }
td.nowrap { white-space: nowrap; }
table.sortable th { cursor: pointer; }
table.sortable th::after { content: " \\2195"; color: #aaa; font-size: .8em; }
table.sortable th[aria-sort=ascending]::after { content: " \\2191"; color: var(--fg); }
table.sortable th[aria-sort=descending]::after { content: " \\2193"; color: var(--fg); }
table.kv th { text-align: left; background: none; font-weight: 600; width: 11rem; }
table.kv td { text-align: left; }
.better { color: var(--good); font-weight: 600; }
.worse { color: var(--bad); font-weight: 600; }
tr.baseline td { background: #fafafa; }
.swatch { display: inline-block; width: .8em; height: .8em; border-radius: 2px; margin-right: .35em;
          vertical-align: -.05em; }
pre { background: var(--bg-soft); padding: .7rem .9rem; overflow: auto; font-size: .82rem; line-height: 1.4;
      font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; }
pre.study { max-height: 26rem; }
figure { margin: 1.6rem 0; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: .9rem; margin-top: .4rem; }
figcaption b { color: var(--fg); }
footer { margin-top: 3rem; font-size: .8rem; color: var(--muted); }
@media print {
  @page { margin: 14mm; }
  body { font-size: 10pt; }
  main { max-width: none; padding: 0; }
  nav { display: none; }
  h2 { break-after: avoid; }
  figure, table, .answer { break-inside: avoid; }
  pre.study { max-height: none; white-space: pre-wrap; }
  table.sortable th::after { content: ""; }
  .scroll { overflow: visible; }
  table { font-size: 7.5pt; }
  th, td { padding: .12rem .25rem; }
  th { white-space: normal; }
  td.name { min-width: 0; }
  pre { white-space: pre-wrap; overflow-wrap: anywhere; }
}
"""


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode()).digest()).decode()
    return (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
            f"base-uri 'none'; form-action 'none'")


def _num(x) -> str:
    """A data-sort attribute value (empty for NaN, so those rows sort together)."""
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else repr(float(x))


def _name(name) -> str:
    """A variant name, escaped, that may break after '_' or '=' (long names in narrow tables; not after
    '.', which would split a number).

    >>> _name("before_relu<b>")
    'before_<wbr>relu&lt;b&gt;'
    """
    text = e(name)
    for ch in ("_", "="):
        text = text.replace(ch, ch + "<wbr>")
    return text


def _swatch(ctx: Context, name: str) -> str:
    return f'<span class="swatch" style="background:{e(ctx.colours[name])}"></span>'


def stats_table(ctx: Context, sortable: bool = True) -> str:
    """The statistics table with its note; ``sortable=False`` (a notebook, where the page's sorting
    script does not run) leaves out the sorting."""
    s = ctx.summary
    metric = "acc." if ctx.higher else "MAE"
    show_diverged = any(row.get("diverged") for row in s["rows"])
    head = ["variant", "n", f"train {metric}", f"test {metric}", "test 95% CI", f"Δ vs {s['baseline']} [95% CI]",
            "P(better)", "p (Holm)", "verdict", "fit"] + (["diverged"] if show_diverged else [])
    attributes = ' class="sortable" id="stats"' if sortable else ""
    out = [f'<div class="scroll"><table{attributes}><thead><tr>']
    kinds = {0: "text", 5: "wrap", 8: "text", 9: "text"}
    out += [f'<th class="{kinds.get(i, "")}" scope="col">{e(h)}</th>' for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for row in s["rows"]:
        name = row["variant"]
        p = row.get("paired")
        fit = (row.get("diagnosis") or {}).get("verdict", "")
        cls = ' class="baseline"' if name == ctx.baseline else ""
        cells = [f'<td class="text name" data-sort="{e(name)}">{_swatch(ctx, name)}{_name(name)}</td>',
                 f'<td>{row["n"]}</td>',
                 f'<td data-sort="{_num(row["train"]["mean"])}">{_pm(row["train"])}</td>',
                 f'<td data-sort="{_num(row["test"]["mean"])}">{_pm(row["test"])}</td>',
                 f'<td data-sort="{_num(row["test"]["ci_low"])}">{_ci(row["test"]["ci_low"], row["test"]["ci_high"])}</td>']
        if p:
            verdict = verdict_text(row)
            vcls = {"better": "better", "worse": "worse", "diverged": "worse"}.get(row.get("verdict", ""), "")
            cells += [f'<td class="nowrap" data-sort="{_num(p["mean_diff"])}">{fmt(p["mean_diff"], signed=True)} '
                      f'{_ci(p["ci_low"], p["ci_high"], signed=True)}</td>',
                      f'<td data-sort="{_num(p["p_better"])}">{fmt(p["p_better"], 2)}</td>',
                      f'<td data-sort="{_num(row.get("p_holm"))}">{_p(row.get("p_holm"))}</td>',
                      f'<td class="text nowrap {vcls}">{e(verdict)}</td>']
        else:
            cells += ['<td data-sort="">(baseline)</td>', '<td data-sort=""></td>', '<td data-sort=""></td>',
                      f'<td class="text nowrap{" worse" if fit == "diverged" else ""}">{e(divergence(row))}</td>']
        cells.append(f'<td class="text nowrap">{e(fit)}</td>')
        if show_diverged:
            cells.append(f'<td data-sort="{row.get("diverged", 0)}">{row.get("diverged", 0)}/{row.get("runs", row["n"])}</td>')
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    better = "higher" if ctx.higher else "lower"
    out.append(f'<p class="muted">Mean ± standard deviation over the seeds; 95% confidence intervals from the t '
               f'distribution. Δ is the paired difference to {e(s["baseline"])} on the same seeds ({better} is better), '
               f'P(better) the posterior probability that the variant is better, p (Holm) the two-sided paired t-test '
               f'p-value corrected for the number of variants compared; the verdict is "better" or "worse" at '
               f'Holm p &lt; 0.05. A member whose loss became NaN or infinite <b>diverged</b>: it has no score, n '
               f'counts the scored seeds, and a variant that diverged on every seed has the verdict "diverged".'
               + (f' With several train/test splits: {e(paired_note(s))} (Nadeau and Bengio\'s correction: the '
                  f'standard error is std · √(1/n + n_test/n_train) instead of std/√n, n − 1 degrees of freedom).'
                  if paired_note(s) else '')
               + (' Click a column heading to sort.' if sortable else '') + '</p>')
    return "\n".join(out)


def _p(p) -> str:
    if p is None or not math.isfinite(p):
        return "—"
    return f"{p:.3g}" if p >= 1e-4 else "&lt; 0.0001"


def diagnosis_table(ctx: Context) -> str:
    head = ["variant", "fit", "train–test gap", "best val. epoch", "val. loss after best", "ensemble", "mean member",
            "kernel L2 norms", "zero activations"]
    out = ['<div class="scroll"><table id="diagnosis"><thead><tr>']
    out += [f'<th class="{"text" if i in (0, 1, 7, 8) else ""}" scope="col">{e(h)}</th>' for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for row in ctx.summary["rows"]:
        d = row.get("diagnosis") or {}
        norms = ", ".join(f"{k}: {v['l2']:.2f}" for k, v in (d.get("weight_norms") or {}).items())
        zeros = ", ".join(f"{k}: {v['zero_fraction']:.0%}" for k, v in (d.get("sparsity") or {}).items())
        rise = d.get("val_loss_rise_after_best")
        out.append("<tr>" + "".join([
            f'<td class="text name">{_swatch(ctx, row["variant"])}{_name(row["variant"])}</td>',
            f'<td class="text nowrap">{e(_fit(row))}</td>',
            f'<td>{fmt(d.get("gap"), signed=True)}</td>',
            f'<td>{d.get("best_val_epoch", "—")}</td>',
            f'<td>{"—" if rise is None else _rise(rise)}</td>',
            f'<td>{fmt(d.get("ensemble_accuracy"))}</td>',
            f'<td>{fmt(d.get("mean_member_accuracy"))}</td>',
            f'<td class="text">{e(norms) or "—"}</td>',
            f'<td class="text">{e(zeros) or "—"}</td>']) + "</tr>")
    out.append("</tbody></table></div>")
    out.append('<p class="muted">Fit: <b>overfit</b> when the train–test gap exceeds 0.05 (or the test error is '
               'more than 1.5 × the training error) or the mean validation loss ends more than 10% above its '
               'minimum; <b>underfit</b> when the training accuracy itself is below 0.9 (or every feature is '
               'constant); <b>diverged</b> when the loss became NaN or infinite on every seed (on some seeds: the '
               'count follows, and the rest are diagnosed from the others); <b>one class in training</b> when the '
               'training split holds a single class, so no model can learn the task. "Best val. epoch" is the '
               'epoch (counted from 0) of the lowest mean validation loss, penalty included, and the next column '
               'how far it rose after it. Ensemble: the accuracy of averaging the seeds\' predicted probabilities, '
               'against the mean single member.</p>')
    grid = ctx.summary.get("grid")
    if grid and math.isfinite(grid.get("best", math.nan)):
        out.append(f'<p>Best strength <b>{grid["best"]:g}</b> (mean {fmt(grid["best_mean"])} ± SE '
                   f'{fmt(grid["best_se"])}); the largest strength within one standard error of it: '
                   f'<b>{grid["one_se"]:g}</b> — the 1-SE rule\'s choice.</p>')
    return "\n".join(out)


def _fit(row) -> str:
    """The diagnosis column: the fit verdict, with how many seeds diverged."""
    verdict = (row.get("diagnosis") or {}).get("verdict", "—")
    if verdict == "diverged":
        return divergence(row) or verdict
    return "; ".join(v for v in (verdict, divergence(row)) if v)


def _answer(ctx: Context) -> str:
    s = ctx.summary
    parts = [f"<b>Warning:</b> {e(w)}." for w in s.get("warnings", ())]
    diverged = [r for r in s["rows"] if (r.get("diagnosis") or {}).get("verdict") == "diverged"]
    if diverged and len(diverged) < len(s["rows"]):
        parts.append("Diverged on every seed (no score): " + ", ".join(f"<b>{e(r['variant'])}</b>" for r in diverged) + ".")
    compared = [r for r in s["rows"] if "paired" in r and r.get("verdict") in ("better", "worse", "no clear difference")]
    better = [r for r in compared if r.get("verdict") == "better"]
    worse = [r for r in compared if r.get("verdict") == "worse"]
    if better:
        parts.append("Better than " + e(s["baseline"]) + ": " + "; ".join(
            f'<b>{e(r["variant"])}</b> ({fmt(r["paired"]["mean_diff"], signed=True)}, 95% CI '
            f'{_ci(r["paired"]["ci_low"], r["paired"]["ci_high"], signed=True)}, Holm p {_p(r["p_holm"])})' for r in better))
    if worse:
        parts.append("Worse than " + e(s["baseline"]) + ": " + "; ".join(
            f'<b>{e(r["variant"])}</b> ({fmt(r["paired"]["mean_diff"], signed=True)})' for r in worse))
    rest = len(compared) - len(better) - len(worse)
    if rest:
        parts.append(f"{rest} of {len(compared)} variant(s) cannot be told apart from {e(s['baseline'])} "
                     f"over these {runs(s)}.")
    if not compared and not diverged:
        parts.append(f"One variant over {runs(s)} (no comparison).")
    if s.get("winner"):
        w = ctx.row(s["winner"])
        parts.append(f'Winner: <b>{e(s["winner"])}</b>, better than {e(s["baseline"])} after the Holm correction '
                     f'(test {e(ctx.metric_label)} {_pm(w["test"])}).')
    elif s.get("no_winner"):
        parts.append(f"No winner: {e(s['no_winner'])}.")
        best = ctx.row(s["best"]) if s.get("best") else None
        if best is not None and best.get("paired"):
            p = best["paired"]
            parts.append(f'The best is <b>{e(best["variant"])}</b> (test {e(ctx.metric_label)} {_pm(best["test"])}, '
                         f'{fmt(p["mean_diff"], signed=True)} vs {e(s["baseline"])}, 95% CI '
                         f'{_ci(p["ci_low"], p["ci_high"], signed=True)}): not a proven improvement.')
    grid = s.get("grid")
    if grid and math.isfinite(grid.get("one_se", math.nan)):
        parts.append(f"Strength (chosen on the {e(grid.get('chosen_on', 'test'))} part): best {grid['best']:g}, "
                     f"largest within one SE {grid['one_se']:g}.")
    if s.get("optimistic"):
        parts.append(f"Note: {e(s['optimistic'])}.")
    return '<div class="answer">' + "".join(f"<p>{p}</p>" for p in parts) + "</div>"


def _kv(rows) -> str:
    return ('<table class="kv">' + "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in rows if v not in (None, ""))
            + "</table>")


def _setup(ctx: Context, n_parameters) -> str:
    study, ds = ctx.run.study, ctx.run.dataset
    info = ds.info
    data_rows = [("dataset", e(info.get("name", ds.name))), ("source", e(info.get("source", ""))),
                 ("task", e(ds.task)), ("rows", e(info.get("rows", ""))), ("split", e(info.get("split", ""))),
                 ("validation", e(info.get("validation", ""))), ("scaling", e(info.get("scaling", ""))),
                 ("shapes", e(", ".join(f"{k} {tuple(v)}" for k, v in info.get("shapes", {}).items())))]
    if info.get("class_names") or info.get("classes") is not None:
        data_rows.append(("classes", e(", ".join(map(str, info.get("class_names") or info.get("classes"))))))
    if ds.feature_names:
        names = ds.feature_names if len(ds.feature_names) <= 12 else ds.feature_names[:12] + ["…"]
        data_rows.append(("features", e(", ".join(map(str, names)))))
    model = study.model
    if "layers" in model:
        layers = "<br>".join(f"<code>{e(line)}</code>" for line in model["layers"])
    else:
        layers = f"factory <code>{e(model['factory'])}</code>"
    t = study.training
    training = ", ".join(f"{k} = {v}" for k, v in t.items() if k != "early_stopping")
    model_rows = [("base model", layers), ("parameters", f"{n_parameters:,}" if n_parameters else ""),
                  ("training", e(training or "defaults (Keras preset)")),
                  ("early stopping", e(json.dumps(t["early_stopping"])) if t.get("early_stopping") else ""),
                  ("activity convention", e(model.get("activity_convention", "mean")))]
    out = ['<div class="scroll">', "<h3>Data</h3>", _kv(data_rows), "<h3>Model and training</h3>", _kv(model_rows)]
    out.append("<h3>Variants</h3>")
    base_layers = _normalised(model.get("layers"))
    descriptions = _descriptions(study.raw)
    rows = []
    for v in study.variants:
        changes = []
        if v.layers is not None and base_layers is not None:
            changes += [f"<code>{e(line)}</code>" for line in v.layers if line not in base_layers]
        for k, val in v.rules.items():
            if model.get("rules", {}).get(k) != val:
                changes.append(f"<code>{e(k)}: {e(json.dumps(val))}</code>")
        for k, val in v.args.items():
            if model.get("args", {}).get(k) != val:
                changes.append(f"<code>{e(k)} = {e(json.dumps(val))}</code>")
        extra = {k: val for k, val in v.training.items() if t.get(k) != val}
        if extra:
            changes.append(e("training: " + ", ".join(f"{k} = {val}" for k, val in extra.items())))
        if v.activity_convention != model.get("activity_convention", "mean"):
            changes.append(e(f"activity convention {v.activity_convention}"))
        described = descriptions.get(v.name)
        if described:
            changes.insert(0, e(described))
        text = "<br>".join(changes) or ("the base model" if v.name == ctx.baseline else "—")
        rows.append(f'<tr><td class="text name">{_swatch(ctx, v.name)}{_name(v.name)}'
                    f'{" (baseline)" if v.name == ctx.baseline else ""}</td><td class="text">{text}</td></tr>')
    out.append('<table><thead><tr><th class="text">variant</th><th class="text">what it changes (layer lines after '
               'the change)</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table></div>")
    return "\n".join(out)


def _normalised(lines):
    """Layer lines as the study writes a variant's (``Dense(units=500, ...)``), to compare with them."""
    if lines is None:
        return None
    from ..study import keras
    from ..study import spec as S

    try:
        return [S._line(*keras.parse_line(line)) for line in lines]
    except Exception:   # noqa: BLE001 - then every line of a variant counts as changed
        return list(lines)


def _descriptions(raw) -> dict:
    """variant -> its ``description`` from the study as given ([variants.NAME] tables or a list)."""
    tables = raw.get("variants") if isinstance(raw, dict) else None
    if isinstance(tables, dict):
        items = tables.items()
    elif isinstance(tables, list):
        items = ((t.get("name"), t) for t in tables if isinstance(t, dict))
    else:
        return {}
    return {name: t["description"] for name, t in items if isinstance(t, dict) and t.get("description")}


def _figure(plot) -> str:
    data = base64.b64encode(plot.png.read_bytes()).decode("ascii")
    return (f'<figure id="fig-{e(plot.key)}"><img src="data:image/png;base64,{data}" alt="{e(plot.title)}">'
            f"<figcaption><b>{e(plot.title)}.</b> {e(plot.caption)} "
            f"<span class=\"muted\">(figures/{e(plot.key)}.png and .svg)</span></figcaption></figure>")


def page(ctx: Context, plots, provenance: dict, n_parameters=None) -> str:
    s = ctx.summary
    study = ctx.run.study
    title = f"{s['study']} — reglab report"
    sections = [("answer", "Answer"), ("setup", "Data and model"), ("statistics", "Statistics"),
                ("diagnosis", "Diagnosis"), ("snippet", "Winning configuration"), ("figures", "Figures"),
                ("provenance", "Provenance")]
    nav = "".join(f'<a href="#{k}">{e(v)}</a>' for k, v in sections)
    figures = "\n".join(_figure(p) for p in plots) or '<p class="muted">No figures.</p>'
    fig_nav = "".join(f'<a href="#fig-{e(p.key)}">{e(p.title)}</a>' for p in plots)
    snippet = s.get("snippet") or "# no winner"
    prov_rows = [("reglab", e(provenance["reglab"])), ("torch", e(provenance["torch"])),
                 ("numpy", e(provenance["numpy"])), ("matplotlib", e(provenance["matplotlib"])),
                 ("python", e(provenance["python"])),
                 ("seeds", e(f"{seeds_text(study.seeds)} ({len(study.seeds)} seeds, the same for every variant"
                             + (f", on each of {study.splits} train/test splits, cv = "
                                f"{study.data.get('cv', 'shuffle')}" if getattr(study, "splits", 1) > 1 else "")
                             + ")")),
                 ("database", e(provenance.get("db", ""))), ("study stored", e(provenance.get("created", ""))),
                 ("report written", e(provenance["date"])),
                 ("members", e(f"{len(ctx.run.records)} results ({len(ctx.names)} variants × {runs(s)})"))]
    spec = json.dumps(study.raw, indent=2, sort_keys=False, ensure_ascii=False, default=str)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_csp()}">
<meta name="generator" content="reglab {e(provenance['reglab'])}">
<title>{e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header>
<p class="meta">reglab study report</p>
<h1>{e(s['study'])}</h1>
<p class="question">{e(s.get('question') or '(no question given in the study file)')}</p>
<p class="meta">{e(s['protocol'])} protocol · {e(runs(s))} · metric: test {e(ctx.metric_label)} · baseline:
{e(s['baseline'])} · {len(ctx.names)} variants</p>
<nav>{nav}</nav>
{_running(provenance.get("running"), len(ctx.run.records))}
</header>
<section id="answer"><h2>Answer</h2>
{_answer(ctx)}
</section>
<section id="setup"><h2>Data and model</h2>
{_setup(ctx, n_parameters)}
</section>
<section id="statistics"><h2>Statistics</h2>
{stats_table(ctx)}
</section>
<section id="diagnosis"><h2>Diagnosis</h2>
{diagnosis_table(ctx)}
</section>
<section id="snippet"><h2>Winning configuration</h2>
<p>{f"The winner, <b>{e(s['winner'])}</b> (better than {e(s['baseline'])} after the Holm correction), as PyTorch code to paste next to your own model." if s.get("winner") else f"No winner: {e(s.get('no_winner') or 'no variant has a score')}."}</p>
<pre><code>{e(snippet)}</code></pre>
</section>
<section id="figures"><h2>Figures</h2>
<nav>{fig_nav}</nav>
{figures}
</section>
<section id="provenance"><h2>Provenance</h2>
{_kv(prov_rows)}
<p class="muted">Versions are those of the environment that wrote this report; the results were trained when the
study was stored. The study as stored in the database (JSON), which a re-run must match exactly:</p>
<pre class="study"><code>{e(spec)}</code></pre>
</section>
<footer>Written by reglab {e(provenance['reglab'])} on {e(provenance['date'])}. This page is self-contained: it
loads nothing from the network.</footer>
</main>
<script>{SORT_SCRIPT}</script>
</body>
</html>
"""


def _running(live, finished: int) -> str:
    """A banner for a study that was still running when the report was written."""
    if not live:
        return ""
    planned = (live.get("planned") or {}).get("members")
    of = f" of {planned}" if planned else ""
    from ..store import holder

    who = holder(live)
    return (f'<p class="running"><b>Still running.</b> This study was being trained when this page was written{e(who)}: '
            f'{finished}{of} members had finished, and everything below is computed from those alone. '
            f'Write the report again when the run ends.</p>')


def provenance(db, created=None) -> dict:
    import importlib.metadata as md

    import matplotlib
    import numpy
    import torch

    try:
        version = md.version("reglab")
    except md.PackageNotFoundError:   # pragma: no cover - running from a source tree
        version = "unknown"
    return {"reglab": version, "torch": torch.__version__, "numpy": numpy.__version__,
            "matplotlib": matplotlib.__version__, "python": f"{platform.python_version()} ({platform.system()})",
            "db": str(db), "created": created or "",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
