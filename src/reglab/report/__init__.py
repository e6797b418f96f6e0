"""Reports of a study: summary.md, results.csv and results.json (figures and HTML: the report issue)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ..study import runner
from ..study.text import diagnosis, table


def write_report(study_name: str, db, out) -> list[Path]:
    """Write the report files of ``study_name`` from the database ``db`` into folder ``out``."""
    from ..store import Store

    with Store(db) as store:
        loaded = runner.from_store(store, study_name)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the report folder {str(out)!r}: {exc.strerror}; choose another --out.") from None
    summary = loaded.summary
    files = {
        "summary.md": _markdown(summary),
        "results.json": json.dumps({"summary": _clean(summary), "records": _rows(loaded.records)}, indent=1,
                                   allow_nan=False, default=str),
        "results.csv": _csv(_rows(loaded.records)),
    }
    paths = []
    for name, text in files.items():
        path = out / name
        tmp = path.with_name(name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        paths.append(path)
    return paths


def _clean(value):
    """JSON-safe copy: NaN/inf become None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _clean(value.item())
    return value


def _rows(records):
    rows = []
    for r in records:
        row = {"variant": r["variant"], "params": json.dumps(r["params"], sort_keys=True), "seed": r["seed"]}
        row.update(r["metrics"])
        row.update({"epochs_run": r["epochs_run"], "diverged": r["diverged"]})
        rows.append(_clean(row))
    return rows


def _csv(rows):
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _markdown(summary):
    lines = [f"# {summary['study']}", ""]
    if summary.get("question"):
        lines += [summary["question"], ""]
    lines += [f"Protocol: {summary['protocol']}; {summary['seeds']} seeds; metric: {summary['metric']}; "
              f"baseline: {summary['baseline']}.", "", "```", table(summary), "```", "", "```", diagnosis(summary), "```"]
    if summary.get("snippet"):
        lines += ["", "Winning configuration:", "", "```python", summary["snippet"], "```"]
    return "\n".join(lines) + "\n"
