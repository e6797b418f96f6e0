"""The plain files of a report: summary.md, results.csv (one row per variant × seed) and results.json."""

from __future__ import annotations

import csv
import io
import json
import math

from ..study.text import diagnosis, runs, table


def clean(value):
    """JSON-safe copy: NaN/inf become None.

    >>> clean({"a": float("nan"), "b": [1.0, float("inf")]})
    {'a': None, 'b': [1.0, None]}
    """
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return clean(value.item())
    return value


def rows(records) -> list[dict]:
    out = []
    splits = any(r.get("split") for r in records)   # a study of several train/test splits: a split column
    for r in records:
        row = {"variant": r["variant"], "params": json.dumps(r["params"], sort_keys=True),
               **({"split": r.get("split", 0)} if splits else {}), "seed": r["seed"]}
        # a diverged member has no score (empty / null), whatever an older run stored for it
        row.update({k: math.nan for k in r["metrics"]} if r["diverged"] else r["metrics"])
        row.update({"epochs_run": r["epochs_run"], "diverged": r["diverged"]})
        out.append(clean(row))
    return out


def results_csv(records) -> str:
    data = rows(records)
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for r in data for k in r))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(data)
    return buffer.getvalue()


def results_json(summary, records) -> str:
    return json.dumps({"summary": clean(summary), "records": rows(records)}, indent=1, allow_nan=False, default=str)


def markdown(summary, figures=()) -> str:
    """The summary as Markdown; ``figures`` are (file name, title) pairs linked at the end."""
    lines = [f"# {summary['study']}", ""]
    if summary.get("question"):
        lines += [summary["question"], ""]
    lines += [f"Protocol: {summary['protocol']}; {runs(summary)}; metric: {summary['metric']}; "
              f"baseline: {summary['baseline']}.", "", "```", table(summary), "```", "", "```", diagnosis(summary), "```"]
    if summary.get("snippet"):
        lines += ["", "Winning configuration:", "", "```python", summary["snippet"], "```"]
    if figures:
        lines += ["", "Figures (open index.html for the whole report):", ""]
        lines += [f"- [{title}]({name})" for name, title in figures]
    return "\n".join(lines) + "\n"
