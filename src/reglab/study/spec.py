"""Study files (TOML): validated into a :class:`Study`, with errors that point at the key.

See the README's "Study files" section for the format; ``examples/`` holds one per seed case study.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import importlib
import json
import math
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .. import data as data_mod
from .._grid import DEFAULT_DECADES, point_name, product
from . import keras


class StudyError(ValueError):
    """A study file that cannot be run; the message names the key and the fix.

    The message is one line by construction: characters that are not printable (a newline or an
    escape sequence inside a key or a layer line) are shown escaped.
    """

    def __init__(self, message: str = ""):
        super().__init__(one_line(str(message)))


def one_line(text: str) -> str:
    r"""``text`` with every non-printable character escaped, e.g. ``"a\nb"`` for a newline."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


TOP_KEYS = {"name", "question", "protocol", "seeds", "splits", "baseline", "data", "model", "training", "variants",
            "grid"}
MODEL_KEYS = {"layers", "factory", "args", "rules", "activity_convention"}
TRAINING_KEYS = {"epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "preset", "early_stopping",
                 "label_smoothing", "class_weight", "clipnorm", "clipvalue", "global_clipnorm", "schedule", "mixup",
                 "ema", "swa", "device"}
# Where a study trains does not change what it measures: not part of a variant's stored key.
NOT_IN_KEY = ("device",)
VARIANT_KEYS = {"layers", "insert", "replace", "rules", "args", "training", "activity_convention", "description"}
GRID_KEYS = {"variant", "values", "refine", "refine_points", "include_none", "parameter"}
EARLY_KEYS = {"monitor", "min_delta", "patience", "mode", "baseline", "restore_best_weights", "start_from_epoch"}
RULE_KEYS = {"kernel", "bias", "recurrent", "activity", "kernel_constraint", "bias_constraint", "recurrent_constraint"}
MAX_STUDY_BYTES = 10 * 2**20


def _unknown(keys, allowed, where):
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(sorted(allowed))}"
            raise StudyError(f"{where}: unknown key {key!r}{hint}")


def _finite(value) -> bool:
    """A real number (not a bool) that is finite; an int too large for a float is not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _show(value) -> str:
    """repr(value), shortened: a pasted 400-digit number stays readable in a one-line error."""
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + f"... ({len(text)} characters)"


def _table(value, where) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a table (e.g. [{where}] or {{...}}). Got {value!r}.")
    return value


@dataclass
class Variant:
    """One configuration of a study: a named change of the base model and training."""

    name: str
    layers: list | None = None          # Keras lines after the change (layer-line models)
    rules: dict = field(default_factory=dict)   # module name -> regularize kwargs (factory models)
    training: dict = field(default_factory=dict)
    activity_convention: str = "mean"
    params: dict = field(default_factory=dict)  # what was varied, e.g. {"value": 0.001}
    args: dict = field(default_factory=dict)    # keyword arguments of the factory (factory models)

    @property
    def key(self) -> str:
        """Stable key of the configuration in the store (factory arguments only when there are some,
        so that the keys stored before they existed stay the same)."""
        training = {k: v for k, v in self.training.items() if k not in NOT_IN_KEY}
        fields = {"layers": self.layers, "rules": self.rules, "training": training,
                  "activity": self.activity_convention, **({"args": self.args} if self.args else {})}
        return self.name + " " + json.dumps(fields, sort_keys=True, default=str)


@dataclass
class Study:
    name: str
    protocol: str
    seeds: list[int]
    data: dict
    model: dict
    training: dict
    variants: list[Variant]
    baseline: str
    question: str = ""
    grid: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    base_dir: Path = Path(".")
    splits: int = 1              # train/test splits (data.cv draws them); runs are paired by (split, seed)

    def as_dict(self) -> dict:
        """The study as the store keeps it; the store refuses a changed study under the same name.

        It is the study as given, except that: ``seeds`` is left out (running with more or fewer
        seeds resumes the same study), the baseline is written out and the variants become a list
        (the store keeps JSON with sorted keys, which would lose their order and so the default
        baseline), a relative data ``path`` is made absolute (reports read the data from anywhere),
        and the data protocol's defaults are written out (:func:`data_protocol`): a study stored
        before the validation part and the target scaling became defaults is a different study, so
        its results are never mixed with ones trained on other rows or targets.

        ``splits = 1`` (the default) and ``cv`` with one split are left out, so a study of one split
        keeps the definition it had before splits existed; with ``splits > 1`` the ``cv`` default
        (``"shuffle"``) is written out. The number of splits is part of the study: another count
        draws other splits (K folds, or the first-n protocol's draws), so it is a different study.
        """
        spec = copy.deepcopy(self.raw)
        spec.pop("seeds", None)
        spec["baseline"] = self.baseline
        if isinstance(spec.get("variants"), dict):
            spec["variants"] = [{"name": name, **table} for name, table in spec["variants"].items()]
        data = spec.get("data")
        if isinstance(data, dict) and isinstance(data.get("path"), str):
            path = Path(data["path"]).expanduser()
            data["path"] = str(path if path.is_absolute() else (self.base_dir / path).resolve())
        if isinstance(data, dict):
            spec["data"] = data_protocol(data)
            if self.splits == 1:
                spec.pop("splits", None)
                if spec["data"].get("cv") == "shuffle":
                    spec["data"].pop("cv")
            else:
                spec["data"].setdefault("cv", "shuffle")
        return spec

    def set_device(self, device: str) -> None:
        """Train every variant (grid points made later included) on ``device``."""
        self.training["device"] = device
        for v in self.variants:
            v.training["device"] = device

    def validation_decides(self) -> list[str]:
        """What the validation data decides in this study, in words: "stopped training" (a variant
        stops early) and "chose λ" (a grid: the one-SE choice and the refinement of the strength).
        Empty when the validation data only draws the learning curves."""
        out = []
        if any(v.training.get("early_stopping") for v in self.variants) or self.training.get("early_stopping"):
            out.append("stopped training")
        if self.protocol == "grid":
            out.append("chose λ")
        return out


def data_protocol(data: dict) -> dict:
    """``[data]`` with the defaults of the data protocol written out: ``validation`` (the fraction
    carved from the training part) and ``standardize_target``, for every dataset but the seeds'
    generators, whose protocol (validation on the test part) did not change. Idempotent."""
    out = dict(data)
    if out.get("name") in data_mod.VALIDATION_ON_TEST_BY_DEFAULT:
        return out
    out.setdefault("validation", data_mod.VALIDATION_FRACTION)
    out.setdefault("standardize_target", True)
    return out


def stored_data(data: dict) -> dict:
    """The ``[data]`` table of a stored study as it was trained: a study stored before validation
    parts and target scaling were defaults (no ``standardize_target`` written out for a dataset
    other than the seeds' generators) validated on the test part and trained on raw targets."""
    out = dict(data)
    if out.get("name") in data_mod.VALIDATION_ON_TEST_BY_DEFAULT or "standardize_target" in out:
        return out
    out.setdefault("validation", "test")
    out["standardize_target"] = False
    return out


def optimism_note(study: Study, dataset) -> str | None:
    """One line for the summary and the report when the test score is optimistic: the test part
    served as validation data and decided something (stopped training, chose λ); else None."""
    decides = study.validation_decides()
    if not getattr(dataset, "optimistic", False) or not decides:
        return None
    if study.data.get("validation") == "test":
        why = "validation = \"test\""
    elif study.data.get("name") in data_mod.VALIDATION_ON_TEST_BY_DEFAULT:
        why = "the seeds' protocol, the default for their generators"
    else:
        why = "the training part is too small to carve a validation part from"
    return (f"the test score is optimistic: the test part also {' and '.join(decides)} ({why}); "
            f"a validation part carved from the training rows (e.g. validation = 0.2) keeps it out")


def load(path: str | Path, *, seeds: int | None = None, epochs: int | None = None) -> Study:
    """Read and validate a study file; ``seeds``/``epochs`` override the file's values."""
    return from_dict(read(path), base_dir=Path(path).parent, seeds=seeds, epochs=epochs)


def read(path: str | Path) -> dict:
    """The TOML table of a study file, not yet validated (:func:`from_dict` does that); a file that
    cannot be read as TOML raises :class:`StudyError`."""
    path = Path(path)
    try:
        exists = path.exists()
    except OSError as exc:    # e.g. a name too long
        raise StudyError(f"Study file {_show(str(path))} cannot be opened ({exc.strerror or exc}); check the path.") from None
    if not exists:
        raise StudyError(f"Study file {str(path)!r} does not exist; check the path.")
    try:
        with open(path, "rb") as file:
            content = file.read(MAX_STUDY_BYTES + 1)    # bounded: `reglab run /dev/zero` must not eat the memory
        if len(content) > MAX_STUDY_BYTES:
            raise StudyError(f"Study file {str(path)!r} is larger than {MAX_STUDY_BYTES // 2**20} MiB; a study file is "
                             f"a short TOML text: check the path.")
        raw = tomllib.loads(content.decode("utf-8-sig"))     # a byte-order mark (Windows editors) is fine
    except IsADirectoryError:
        raise StudyError(f"Study file {str(path)!r} is a folder; give the TOML file in it.") from None
    except OSError as exc:
        raise StudyError(f"Study file {str(path)!r} cannot be read ({exc.strerror or exc}); check the path.") from None
    except UnicodeDecodeError:
        raise StudyError(f"Study file {str(path)!r} is not UTF-8 text; save it as a TOML text file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"Study file {str(path)!r} is not valid TOML: {exc}; fix the TOML syntax there.") from None
    return raw


def from_dict(raw: dict, *, base_dir: str | Path = ".", seeds: int | None = None, epochs: int | None = None) -> Study:
    raw = copy.deepcopy(raw)
    _no_dates(raw, "study")
    if seeds is not None:
        raw["seeds"] = seeds
    if epochs is not None:
        raw.setdefault("training", {})["epochs"] = epochs
    _unknown(raw, TOP_KEYS, "study")
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}", name):
        raise StudyError(f"study: 'name' must be a short name of letters, digits, '_', '.', '-'. Got {name!r}.")
    protocol = raw.get("protocol", "compare")
    if protocol not in ("compare", "grid", "repeat"):
        raise StudyError(f"study: 'protocol' must be 'compare', 'grid' or 'repeat'. Got {protocol!r}.")
    seed_list = _seeds(raw.get("seeds", 30))
    splits = _splits(raw.get("splits", 1))
    data = _table(raw.get("data"), "data")
    if not data:
        raise StudyError("study: the [data] table is missing; e.g. [data] name = \"moons\".")
    _cv(data, splits)
    model = _table(raw.get("model"), "model")
    _unknown(model, MODEL_KEYS, "model")
    if ("layers" in model) == ("factory" in model):
        raise StudyError("model: give either 'layers' (Keras-style lines) or 'factory' (\"package.module:function\").")
    if "layers" in model:
        _lines(model["layers"], "model.layers")
        if "args" in model:
            raise StudyError("model.args needs a factory model (the keyword arguments of model.factory); "
                             "layer lines take their arguments in the lines.")
    else:
        _factory_ref(model["factory"])
        _rules(model.get("rules", {}), "model.rules")
        _args(model.get("args", {}), "model.args")
    convention = _convention(model.get("activity_convention", "mean"), "model.activity_convention")
    training = _training(_table(raw.get("training"), "training"), "training")
    study = Study(name=name, protocol=protocol, seeds=seed_list, data=data, model=model, training=training,
                  variants=[], baseline="", question=str(raw.get("question", "")), raw=raw,
                  base_dir=Path(base_dir), splits=splits)
    if protocol == "grid":
        study.grid = _table(raw.get("grid"), "grid")
        _unknown(study.grid, GRID_KEYS, "grid")
        _grid_settings(study.grid)
        if "variants" in raw:
            raise StudyError("study: a grid study takes [grid], not [variants]; use protocol = \"compare\" for named variants.")
        study.variants = grid_variants(study, values(study.grid))
    else:
        tables = _variant_tables(raw.get("variants")) or {"none": {}}
        if protocol == "repeat" and len(tables) != 1:
            raise StudyError("study: protocol 'repeat' takes exactly one variant (or none).")
        study.variants = [variant(study, vname, _table(vt, f"variants.{vname}"), convention)
                          for vname, vt in tables.items()]
    names = [v.name for v in study.variants]
    baseline = raw.get("baseline", names[0])
    if baseline not in names:
        raise StudyError(f"study: baseline {baseline!r} is not a variant; variants are: {', '.join(names)}.")
    study.baseline = baseline
    return study


def _no_dates(value, where):
    """TOML dates and times have no meaning in a study (and could not be stored as JSON): refuse them."""
    if isinstance(value, (datetime.date, datetime.time)):
        raise StudyError(f"{where}: {value.isoformat()} is a TOML date/time, which a study file does not use; "
                         f"put it in quotes if it is text.")
    if isinstance(value, dict):
        for key, inner in value.items():
            _no_dates(inner, f"{where}.{key}" if where != "study" else str(key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _no_dates(inner, f"{where}[{i}]")


def _variant_tables(value) -> dict:
    """[variants.NAME] tables, or an array of tables [[variants]] with name = "..." (order kept)."""
    if not isinstance(value, list):
        return _table(value, "variants")
    out = {}
    for i, table in enumerate(value):
        table = dict(_table(table, f"variants[{i}]"))
        name = table.pop("name", None)
        if not isinstance(name, str) or not name:
            raise StudyError(f"variants[{i}] needs name = \"...\" (a [[variants]] table names its variant).")
        if name in out:
            raise StudyError(f"variants: {name!r} is given twice.")
        out[name] = table
    return out


def _grid_settings(grid):
    for key in ("refine", "include_none"):
        if key in grid and not isinstance(grid[key], bool):
            raise StudyError(f"grid.{key} must be true or false. Got {grid[key]!r}.")
    points = grid.get("refine_points", 5)
    if isinstance(points, bool) or not isinstance(points, int) or not 2 <= points <= 100:
        raise StudyError(f"grid.refine_points must be an int from 2 to 100. Got {points!r}.")
    if "parameter" in grid and not isinstance(grid["parameter"], str):
        raise StudyError(f"grid.parameter must be a name (a string). Got {grid['parameter']!r}.")


def _seeds(value):
    if isinstance(value, bool):
        raise StudyError(f"study: 'seeds' must be a count (e.g. 30) or a list of ints. Got {value!r}.")
    if isinstance(value, int):
        if not 1 <= value <= 100_000:
            raise StudyError(f"study: 'seeds' must be between 1 and 100000. Got {value}.")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        if len(set(value)) != len(value):
            raise StudyError("study: 'seeds' lists a seed twice.")
        return list(value)
    raise StudyError(f"study: 'seeds' must be a count (e.g. 30) or a non-empty list of ints >= 0. Got {value!r}.")


def _splits(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= data_mod.MAX_SPLITS:
        raise StudyError(f"study: 'splits' must be an int from 1 to {data_mod.MAX_SPLITS} (the number of train/test "
                         f"splits; 1 = one split). Got {_show(value)}.")
    return value


def _cv(data: dict, splits: int) -> None:
    """``[data] cv`` against the study's splits: a known way to draw them, K-fold with K >= 2 and
    without its own train/test sizes."""
    if "cv" not in data:
        return
    cv = data["cv"]
    if cv not in data_mod.CV:
        raise StudyError(f"data.cv must be \"shuffle\" (K stratified random splits) or \"kfold\" (K folds). "
                         f"Got {_show(cv)}.")
    if cv == "kfold":
        if splits < 2:
            raise StudyError("data.cv = \"kfold\" needs splits >= 2 (the number of folds); set e.g. splits = 5 at "
                             "the top of the study file.")
        for key in ("train", "test_fraction"):
            if key in data:
                raise StudyError(f"data.{key} does not apply with cv = \"kfold\": each of the {splits} folds is the "
                                 f"test part once; remove {key} or use cv = \"shuffle\".")


def _lines(lines, where):
    if not isinstance(lines, list) or not lines or not all(isinstance(x, str) for x in lines):
        raise StudyError(f"{where} must be a non-empty list of layer lines such as \"Dense(10, activation='relu')\".")
    for i, line in enumerate(lines):
        try:
            keras.parse_line(line)
        except keras.ModelError as exc:
            raise StudyError(f"{where}[{i}]: {exc}") from None


def _convention(value, where):
    if value not in ("mean", "sum"):
        raise StudyError(f"{where} must be 'mean' (Keras >= 3.14) or 'sum' (Keras 2.3, 3.0-3.13). Got {value!r}.")
    return value


def _training(table, where):
    _unknown(table, TRAINING_KEYS, where)
    out = dict(table)
    for key, low in (("epochs", 1), ("batch_size", 1)):
        if key in out and (isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < low):
            raise StudyError(f"{where}.{key} must be an int >= {low}. Got {out[key]!r}.")
    for key in ("lr", "weight_decay", "momentum"):
        if key in out and (not _finite(out[key]) or out[key] < 0):
            raise StudyError(f"{where}.{key} must be a finite number >= 0. Got {_show(out[key])}.")
    if "optimizer" in out and out["optimizer"] not in ("adam", "adamw", "sgd", "rmsprop", "adagrad"):
        raise StudyError(f"{where}.optimizer must be 'adam', 'adamw', 'sgd', 'rmsprop' or 'adagrad'. "
                         f"Got {out['optimizer']!r}.")
    for key in ("clipnorm", "clipvalue", "global_clipnorm"):
        if key in out and (not _finite(out[key]) or out[key] <= 0):
            raise StudyError(f"{where}.{key} must be a finite number > 0. Got {_show(out[key])}.")
    if sum(key in out for key in ("clipnorm", "clipvalue", "global_clipnorm")) > 1:
        raise StudyError(f"{where} takes only one of clipnorm, clipvalue and global_clipnorm (as Keras).")
    if "label_smoothing" in out and (not _finite(out["label_smoothing"]) or not 0 <= out["label_smoothing"] <= 1):
        raise StudyError(f"{where}.label_smoothing must be a number in [0, 1]. Got {_show(out['label_smoothing'])}.")
    if "class_weight" in out:
        out["class_weight"] = _class_weight(out["class_weight"], f"{where}.class_weight")
    if "schedule" in out:
        from .. import schedules

        table = _table(out["schedule"], f"{where}.schedule")
        try:
            schedules.get(table)
        except (ValueError, TypeError, OverflowError) as exc:
            raise StudyError(f"{where}.schedule: {one_line(str(exc))} (kinds: {', '.join(schedules.KINDS)}).") from None
        out["schedule"] = dict(table)
    if "device" in out:
        from ..sources import resolve_device

        if not isinstance(out["device"], str):
            raise StudyError(f"{where}.device must be a string like \"auto\", \"cpu\" or \"cuda\". Got {out['device']!r}.")
        try:
            resolve_device(out["device"], owner=f"{where}.device")
        except ValueError as exc:
            raise StudyError(one_line(str(exc))) from None
    if "preset" in out and out["preset"] not in ("keras", "torch"):
        raise StudyError(f"{where}.preset must be 'keras' or 'torch'. Got {out['preset']!r}.")
    if "early_stopping" in out:
        es = _table(out["early_stopping"], f"{where}.early_stopping")
        _unknown(es, EARLY_KEYS, f"{where}.early_stopping")
        for key in ("min_delta", "baseline"):
            if es.get(key) is not None and not _finite(es[key]):
                raise StudyError(f"{where}.early_stopping.{key} must be a finite number. Got {_show(es[key])}.")
        from ..callbacks import EarlyStopping

        try:
            EarlyStopping(**es)
        except (ValueError, TypeError, OverflowError) as exc:
            raise StudyError(f"{where}.early_stopping: {exc}") from None
    for key in ("mixup", "ema", "swa"):
        if key in out:
            out[key] = _option(key, out[key], f"{where}.{key}")
    _one_average(out, where)
    return out


def _option(key, value, where) -> dict:
    """``mixup`` / ``ema`` / ``swa``: a table of the arguments of :class:`reglab.Mixup` / ``EMA`` / ``SWA``,
    e.g. ``mixup = { mixup_alpha = 0.2 }``, ``ema = { momentum = 0.99 }``, ``swa = { start_epoch = 10 }``."""
    from .. import averaging, mixup

    kind = {"mixup": mixup.Mixup, "ema": averaging.EMA, "swa": averaging.SWA}[key]
    table = _table(value, where)
    _unknown(table, set(kind.defaults), where)
    try:
        kind(**table)
    except (ValueError, TypeError, OverflowError) as exc:
        raise StudyError(f"{where}: {exc}") from None
    return dict(table)


def _one_average(training: dict, where) -> None:
    if "ema" in training and "swa" in training:
        raise StudyError(f"{where} sets both ema and swa; each replaces the final weights by its own average, "
                         "so give one (a variant's [training] adds to the study's).")


def _class_weight(value, where):
    """``"balanced"`` or a table ``{ "0" = 1.0, "1" = 5.0 }`` (TOML keys are strings) → class -> weight."""
    if value == "balanced":
        return value
    table = _table(value, where)
    out = {}
    for key, weight in table.items():
        if not re.fullmatch(r"\d+", str(key)):
            raise StudyError(f"{where} keys must be class numbers like \"0\", \"1\". Got {key!r}.")
        if not _finite(weight) or weight < 0:
            raise StudyError(f"{where}.{key} must be a finite number >= 0. Got {_show(weight)}.")
        out[str(int(key))] = float(weight)
    return out


def _rules(rules, where):
    rules = _table(rules, where)
    for module, kwargs in rules.items():
        _unknown(_table(kwargs, f"{where}.{module}"), RULE_KEYS, f"{where}.{module}")
    return rules


def _factory_ref(ref):
    if not isinstance(ref, str) or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", ref):
        raise StudyError(f"model.factory must look like \"package.module:function\". Got {ref!r}.")
    return ref


def _merge_training(base: dict, change: dict) -> dict:
    merged = dict(base)
    for key, value in change.items():
        if key == "early_stopping" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def variant(study: Study, name: str, table: dict, convention: str, params: dict | None = None) -> Variant:
    where = f"variants.{name}"
    _unknown(table, VARIANT_KEYS, where)
    training = _merge_training(study.training, _training(_table(table.get("training"), f"{where}.training"),
                                                         f"{where}.training"))
    _one_average(training, f"{where}.training")
    convention = _convention(table.get("activity_convention", convention), f"{where}.activity_convention")
    if "factory" in study.model:
        for key in ("layers", "insert", "replace"):
            if key in table:
                raise StudyError(f"{where}.{key} needs a layer-line model; a factory model changes through 'rules'.")
        rules = copy.deepcopy(study.model.get("rules", {}))
        for module, kwargs in _rules(table.get("rules", {}), f"{where}.rules").items():
            rules[module] = {**rules.get(module, {}), **kwargs}
        args = {**study.model.get("args", {}), **_args(table.get("args", {}), f"{where}.args")}
        return Variant(name, None, rules, training, convention, params or {}, args)
    for key in ("rules", "args"):
        if key in table:
            raise StudyError(f"{where}.{key} needs a factory model; change layer lines through 'layers'.")
    lines = list(study.model["layers"])
    if "replace" in table:
        _lines(table["replace"], f"{where}.replace")
        lines = list(table["replace"])
    parsed = [keras.parse_line(line) for line in lines]
    for index, changes in _table(table.get("layers"), f"{where}.layers").items():
        i = _index(index, len(parsed), f"{where}.layers")
        kind, args = parsed[i]
        args = {**args, **_table(changes, f"{where}.layers.{index}")}
        parsed[i] = (kind, args)
        _check_args(kind, args, f"{where}.layers.{index}")
    inserts = _table(table.get("insert"), f"{where}.insert")
    for index in sorted(inserts, key=lambda k: -1 if k == "input" else _sort_index(k), reverse=True):
        line = inserts[index]
        if not isinstance(line, str):
            raise StudyError(f"{where}.insert.{index} must be a layer line such as \"Dropout(0.5)\". Got {line!r}.")
        try:
            item = keras.parse_line(line)
        except keras.ModelError as exc:
            raise StudyError(f"{where}.insert.{index}: {exc}") from None
        position = 0 if index == "input" else _index(index, len(parsed), f"{where}.insert") + 1
        parsed.insert(position, item)
    return Variant(name, [_line(kind, args) for kind, args in parsed], {}, training, convention, params or {})


def _sort_index(key) -> int:
    try:
        return int(key)
    except (TypeError, ValueError):
        return 0          # not an index: _index below names it


def _check_args(kind, args, where):
    try:
        keras.parse_line(_line(kind, args))
    except keras.ModelError as exc:
        raise StudyError(f"{where}: {exc}") from None


def _index(key, n, where):
    try:
        i = int(key)
    except (TypeError, ValueError):
        raise StudyError(f"{where}: {key!r} must be a layer index (0 to {n - 1}).") from None
    if not 0 <= i < n:
        raise StudyError(f"{where}: layer {i} does not exist; the model has layers 0 to {n - 1}.")
    return i


def _line(kind: str, args: dict) -> str:
    """Write (kind, args) back as a layer line; strings that are calls or names stay unquoted."""
    parts = []
    for key, value in args.items():
        parts.append(f"{key}={_literal(value)}")
    return f"{kind}({', '.join(parts)})"


def _literal(value) -> str:
    from .._parse import Call

    if isinstance(value, Call):
        inner = [_literal(a) for a in value.args] + [f"{k}={_literal(v)}" for k, v in value.kwargs.items()]
        return f"{value.name}({', '.join(inner)})"
    if isinstance(value, str):
        if re.fullmatch(r"[A-Za-z_]\w*\(.*\)", value.strip()):
            return value.strip()     # a regularizer/constraint call written as text in TOML
        return repr(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return _literal(tuple(value))
    return repr(value)


def values(grid: dict):
    """The grid's values: a list (one strength) or a table of lists (a product of strengths)."""
    vals = grid.get("values", DEFAULT_DECADES)
    if isinstance(vals, dict):
        if not vals:
            raise StudyError("grid.values is empty; give e.g. values = [0.1, 0.01, 0.001].")
        out = {}
        for key, lst in vals.items():
            out[key] = _value_list(lst, f"grid.values.{key}")
        return out
    out = {"value": _value_list(vals, "grid.values")}
    if grid.get("refine", True) and min(out["value"]) <= 0:
        raise StudyError("grid.values: refining works on a log scale, so strengths must be > 0 "
                         "(include_none = true already runs without the penalty), or set refine = false.")
    return out


def _value_list(lst, where):
    if not isinstance(lst, list) or not lst:
        raise StudyError(f"{where} must be a non-empty list of numbers, e.g. [0.1, 0.01, 0.001].")
    for v in lst:
        if not _finite(v) or v < 0:
            raise StudyError(f"{where}: strengths must be finite numbers >= 0. Got {_show(v)}.")
    if len({f"{v:g}" for v in lst}) != len(lst):
        raise StudyError(f"{where} lists a strength twice: {lst!r}.")
    return [float(v) for v in lst]


def grid_variants(study: Study, grid_values: dict, only: list[dict] | None = None) -> list[Variant]:
    """One variant per grid point (plus 'none' when include_none), from the grid's template variant."""
    template = _table(study.grid.get("variant"), "grid.variant")
    if not template:
        raise StudyError("grid.variant is missing: the change each value makes, e.g. "
                         "variant = { layers = { 0 = { kernel_regularizer = \"l2({value})\" } } }.")
    keys = list(grid_values)
    text = json.dumps(template)
    for key in keys:
        if "{" + key + "}" not in text:
            raise StudyError(f"grid.variant never uses {{{key}}}; write e.g. \"l2({{{key}}})\" where the value goes.")
    points = only if only is not None else product(grid_values)
    out = []
    if study.grid.get("include_none", True) and only is None:
        out.append(variant(study, "none", {}, study.model.get("activity_convention", "mean")))
    for point in points:
        filled = text
        for key, value in point.items():
            # "{value}" alone is the number itself (e.g. a factory argument); inside a string, its text
            filled = filled.replace('"{' + key + '}"', f"{value:g}").replace("{" + key + "}", f"{value:g}")
        name = point_name(point)
        try:
            table = json.loads(filled)
        except ValueError:
            raise StudyError(f"grid.variant: putting {name} in for the placeholders does not give a valid table; "
                             f"use the placeholder only inside strings such as \"l2({{{keys[0]}}})\".") from None
        out.append(variant(study, name, table, study.model.get("activity_convention", "mean"), dict(point)))
    return out


def _args(value, where) -> dict:
    """Keyword arguments of the factory: a table of names to numbers, strings, booleans or lists."""
    table = _table(value, where)
    for key, v in table.items():
        if not key.isidentifier():
            raise StudyError(f"{where}: {key!r} is not a Python argument name.")
        if isinstance(v, dict):
            raise StudyError(f"{where}.{key}: give a number, string, boolean or list, not a table.")
    return table


def resolve_factory(ref: str, base_dir: Path, what: str = "model.factory"):
    """Import ``package.module:function`` (the study's folder first on the path); no eval."""
    module_name, _, attr = ref.partition(":")
    sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StudyError(f"{what}: cannot import {module_name!r} ({exc}); put it next to the study file or install it.") from None
    except Exception as exc:   # noqa: BLE001 - e.g. a SyntaxError in the user's module
        raise StudyError(f"{what}: importing {module_name!r} raised {_failure(exc)}; fix that module.") from None
    finally:
        sys.path.remove(str(base_dir))
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise StudyError(f"{what}: {module_name!r} has no function {attr!r}.")
    return fn


def _failure(exc: BaseException) -> str:
    """'ZeroDivisionError: division by zero (mod.py, line 2)': the error and the user's line that raised it."""
    import traceback

    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, SyntaxError) and exc.filename:
        text, place = exc.msg, (exc.filename, exc.lineno)
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
        own = [f for f in frames if "site-packages" not in f.filename and "<frozen" not in f.filename]
        frame = (own or frames or [None])[-1]
        place = (frame.filename, frame.lineno) if frame is not None else None
    where = f" ({Path(place[0]).name}, line {place[1]})" if place else ""
    return f"{type(exc).__name__}: {text}{where}"


def builder(study: Study, input_shape: tuple, task: str, classes: int | None = None):
    """The ``build(variant=...)`` function the population engine calls, one model per variant
    (``classes``: the number of classes of a multiclass task, checked against the last layer)."""
    by_name = {v.name: v for v in study.variants}
    factory = resolve_factory(study.model["factory"], study.base_dir) if "factory" in study.model else None

    def build(variant: str):
        v = by_name[variant]
        if factory is None:
            try:
                return keras.build(v.layers, input_shape, task=task, activity_convention=v.activity_convention,
                                   classes=classes)
            except keras.ModelError as exc:
                raise StudyError(f"variants.{v.name}: {exc}") from None
        try:
            model = factory(**v.args)
        except Exception as exc:   # noqa: BLE001 - the user's own code: one line that says where it failed
            raise StudyError(f"model.factory {study.model['factory']!r} raised {_failure(exc)}; fix the factory.") from None
        if not isinstance(model, nn.Module):
            raise StudyError(f"model.factory returned {type(model).__name__}, not an nn.Module.")
        modules = dict(model.named_modules())
        from ..attach import regularize

        for name, kwargs in v.rules.items():
            if name not in modules:
                raise StudyError(f"variants.{v.name}.rules: the model has no module {name!r}; "
                                 f"modules: {', '.join(n for n in modules if n)}.")
            try:
                regularize(modules[name], activity_convention=v.activity_convention, **kwargs)
            except (ValueError, TypeError) as exc:
                raise StudyError(f"variants.{v.name}.rules.{name}: {exc}") from None
        return model

    return build
