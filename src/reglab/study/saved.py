"""Saved models (``reglab run --save-models DIR``): every member a run trains, written as its
population finishes, with the code that builds its architecture.

- ``DIR/<variant>/split<k>-seed<s>.safetensors``: the member's ``state_dict()`` (parameters and
  buffers, e.g. batch-norm statistics) as CPU tensors in the safetensors format: no pickle, so
  loading it runs no code;
- ``DIR/<variant>/build.py``: ``def build():`` returns the variant's model with its regularization
  attached (:func:`reglab.study.snippet.build_code`), so that
  ``build().load_state_dict(safetensors.torch.load_file(path))`` restores a member;
- ``DIR/index.json``: the study, its task and metric, how its inputs were scaled, and one entry per
  member: variant, split, seed, file, build, diverged, and the test score and loss the store holds
  (``test_accuracy`` or ``test_mae``; regression scores in the target's original units).

Every member is written, not only the winner's: the winner is known only when the study ends.
A resumed run writes only what it trains: members finished by an earlier run are read from the
store, not trained again, and so not written. A variant's folder is its name with any character
outside letters, digits and `` =,.+-_()`` escaped as in a URL, so that no name reaches outside DIR:

>>> folder_name("l2"), folder_name("a=0.1, b=0.01"), folder_name("../x"), folder_name("..")
('l2', 'a=0.1, b=0.01', '..%2Fx', '%2E%2E')
"""

from __future__ import annotations

import json
import math
import os
import urllib.parse
from pathlib import Path

INDEX = "index.json"
_KEPT = " =,.+-_()"      # kept as they are in a folder name (a grid's point names use them)
MAX_NAME_BYTES = 200     # file systems allow 255 bytes a name


def folder_name(variant: str) -> str:
    """The folder of the variant named ``variant`` (see the module's docstring)."""
    name = urllib.parse.quote(variant, safe=_KEPT)
    if not name.strip("."):   # "", ".", "..": a name that is not a folder of its own
        name = name.replace(".", "%2E") or "%"
    return name


def check_folder(path, study) -> Path:
    """``path`` made ready, before anything trains, for the members of ``study``: created when
    missing. ValueError with one line when it is a file, cannot be created or written, or holds the
    models of another study."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(path)!r} is a file; give a folder (it is created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the folder {str(path)!r} ({exc.strerror or exc}); choose another") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write into the folder {str(path)!r}; choose another")
    index = _read_index(folder)
    if index is not None and index.get("study") != study.name:
        raise ValueError(f"{str(path)!r} holds the models of the study {index.get('study')!r}, not {study.name!r}; "
                         f"choose another folder")
    for v in study.variants:
        if len(folder_name(v.name).encode()) > MAX_NAME_BYTES:
            raise ValueError(f"the variant name {v.name[:40]!r}... is too long for a folder name; shorten it")
    return folder


def save_members(folder, study, dataset, split: int, variants, result, records) -> list[dict]:
    """Write every member of ``result`` (train_population over ``variants``, on the data ``dataset``
    of train/test split ``split``; ``records``: its records, member by member) into ``folder`` and
    add them to its index.json; returns their index entries."""
    from safetensors.torch import save_file

    from .snippet import build_code

    folder = Path(folder)
    metric = result.task.metric
    entries = []
    for i, member in enumerate(result.members):
        variant, seed, model = variants[member["config_index"]], int(member["seed"]), result.models[i]
        sub = folder / folder_name(variant.name)
        sub.mkdir(exist_ok=True)
        code = build_code(study, variant, model)
        _write(sub / "build.py", lambda tmp, c=code: tmp.write_text(c, encoding="utf-8"))
        # copies: a member's tensors may share storage with the population's, which safetensors refuses
        state = {k: t.detach().to("cpu", copy=True).contiguous() for k, t in model.state_dict().items()}
        meta = {"study": study.name, "variant": variant.name, "split": str(split), "seed": str(seed)}
        file = sub / f"split{split}-seed{seed}.safetensors"
        _write(file, lambda tmp, s=state, m=meta: save_file(s, str(tmp), metadata=m))
        metrics = records[i]["metrics"]
        entry = {"variant": variant.name, "split": split, "seed": seed, "file": f"{sub.name}/{file.name}",
                 "build": f"{sub.name}/build.py", "diverged": bool(records[i]["diverged"]),
                 f"test_{metric}": _number(metrics.get(f"test_{metric}")),
                 "test_loss": _number(metrics.get("test_loss"))}
        if dataset.target_scale is not None:
            entry["target_scale"] = list(dataset.target_scale)   # (mean, std): value = output * std + mean
        entries.append(entry)
    _update_index(folder, study, dataset, metric, entries)
    return entries


def _update_index(folder, study, dataset, metric, entries) -> None:
    """index.json with ``entries`` added (an entry of the same variant, split and seed replaced)."""
    index = _read_index(folder) or {}
    key = lambda e: (e["variant"], e["split"], e["seed"])   # noqa: E731
    members = {key(e): e for e in index.get("members", [])}
    members.update({key(e): e for e in entries})
    order = {v.name: i for i, v in enumerate(study.variants)}   # the study's order of variants
    info = dataset.info or {}
    data = {"scaling": info.get("scaling", "none"), **({"classes": info["classes"]} if "classes" in info else {}),
            **({"target_scaling": "value = output * std + mean, (mean, std) = each member's target_scale"}
               if dataset.target_scale is not None else {})}
    index = {"study": study.name, "task": dataset.task, "metric": metric,
             "load": "model = build(); model.load_state_dict(safetensors.torch.load_file(file))",
             "data": data, "members": sorted(members.values(), key=lambda e: (order.get(e["variant"], len(order)),
                                                                                 *key(e)))}
    text = json.dumps(index, indent=1, allow_nan=False)
    _write(Path(folder) / INDEX, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def _read_index(folder: Path) -> dict | None:
    path = folder / INDEX
    if not path.exists():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = None
    if not isinstance(index, dict) or not isinstance(index.get("members"), list):
        raise ValueError(f"{str(folder)!r} has an {INDEX} that reglab did not write; choose another folder")
    return index


def _write(path: Path, write) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``: an interrupted run leaves no half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _number(value):
    """A finite float, or None (JSON has no NaN: a diverged member has no score)."""
    return float(value) if value is not None and math.isfinite(float(value)) else None
