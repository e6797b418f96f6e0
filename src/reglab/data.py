"""Datasets for studies: the seeds' generators, scikit-learn's bundled sets, and CSV/NPZ files.

``load(spec)`` turns the ``[data]`` table of a study file (a plain dict) into a :class:`Dataset`:
float32 features, int64 classes ``0..k-1`` (or float32 regression targets), a train/test split, a
validation part, and standardisation ``x' = (x - mean_train) / std_train`` fitted on the training
part only (a constant feature has std 0 and is divided by 1). Every malformed input raises
:class:`DataError`, one line naming the file, column or row and the fix.

Validation (what early stopping and a grid's choice of λ look at): by default a part carved from the
training rows (stratified 20 % for classes, random 20 % for regression, ``split_seed``), never
trained on; the seeds' generators (moons, circles) keep the seeds' protocol and validate on the test
part, as does ``validation = "test"`` for any dataset. Then ``Dataset.optimistic`` is true: the test
score is optimistic when the test part stopped training or chose λ.

Regression targets are standardised with the training part's mean and std (``standardize_target``,
default true): models train on ``(y - mean) / std``, and :meth:`Dataset.to_original_units` and
:meth:`Dataset.metrics_in_original_units` bring predictions, MAE and losses back to the target's units.

Several train/test splits (``load(spec, splits=K)``, a study's ``splits = K``): ``cv = "shuffle"``
(the default) draws split ``k`` as the one split would be drawn with ``split_seed + k`` (split 0
is the one split); ``cv = "kfold"`` cuts the rows into K folds (stratified for classes, shuffled
with ``split_seed``) and fold ``k`` is the test part of split ``k``. The first-n protocol
(``train = n``, the generators' default) has only one split of its own: with ``splits > 1`` each
split draws ``n`` training rows at random (stratified for classes, ``split_seed + k``). Each
split carves its own validation part (``split_seed + k``) and fits its own standardisation on its
training rows. The returned dataset is split 0; ``dataset.splits`` lists all K
(:meth:`Dataset.for_split`).

>>> ds = load({"name": "moons"})
>>> ds.task, ds.X_train.shape, ds.X_test.shape, ds.info["split"], ds.optimistic
('binary', (30, 2), (70, 2), 'first 30 rows train, remaining 70 test', True)
>>> ds = load({"name": "iris"})
>>> ds.X_train.shape, ds.X_val.shape, ds.X_test.shape, ds.optimistic
((84, 4), (21, 4), (45, 4), False)
>>> load({"name": "moon"})
Traceback (most recent call last):
...
reglab.data.DataError: [data] name = 'moon' is not a dataset (did you mean 'moons'?); choose one of ...
"""

from __future__ import annotations

import csv
import difflib
import errno
import io
import math
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GENERATORS = {  # the seeds' settings: make_moons(100, noise=0.2, random_state=1), make_circles(..., noise=0.1)
    "moons": {"n_samples": 100, "noise": 0.2, "random_state": 1},
    "circles": {"n_samples": 100, "noise": 0.1, "random_state": 1, "factor": 0.8},
}
BUILTINS = ("breast_cancer", "wine", "iris", "digits", "diabetes")
FILES = ("csv", "npz")
FACTORY = ("factory",)   # [data] factory = "package.module:function" (name = "factory" implied)
NAMES = (*GENERATORS, *BUILTINS, *FILES, *FACTORY)
SPLIT_BY_REGLAB = (*GENERATORS, *BUILTINS, *FILES)   # a factory gives its own train/test parts
TASKS = ("binary", "multiclass", "regression")
SHAPES = ("flat", "image", "sequence")
GENERATOR_TRAIN_ROWS = 30          # the seeds train on the first 30 generated points
CV = ("shuffle", "kfold")          # how several train/test splits are drawn (a study's splits = K)
MAX_SPLITS = 1000
TEST_FRACTION = 0.3
VALIDATION_FRACTION = 0.2          # of the training part, carved as validation unless validation = "test"
# the seeds' generators validate on the test part by default (the seeds' protocol and figures)
VALIDATION_ON_TEST_BY_DEFAULT = tuple(GENERATORS)
# not the generators (the seeds don't standardise them) and not digits (divided by 16 instead)
STANDARDIZED_BY_DEFAULT = ("csv", "npz", "breast_cancer", "wine", "iris", "diabetes")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_GENERATED = 10_000_000         # n_samples of a generator


class DataError(ValueError):
    """A data problem the user can fix; the message is one line naming the file, column or row and the fix."""

    def __init__(self, message: str = ""):
        text = str(message)   # one line by construction: a newline in a path or a name is shown as \n
        super().__init__(text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text))


@dataclass
class Dataset:
    name: str
    task: str                      # "binary" | "multiclass" | "regression"
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    X_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    feature_names: list[str] | None = None
    info: dict = field(default_factory=dict)   # JSON-serialisable: source, rows, split, scaling, shapes, classes
    # with several train/test splits: every split's dataset, this one (split 0) first; else None
    splits: list | None = field(default=None, repr=False, compare=False)
    w_train: np.ndarray | None = None          # sample weights of the training rows ([data] weight = "column")

    def for_split(self, k: int) -> Dataset:
        """The dataset of train/test split ``k`` (``0 <= k < len(splits)``); split 0 is this one."""
        if self.splits is None:
            if k != 0:
                raise ValueError(f"this dataset has one train/test split (split 0); there is no split {k!r}")
            return self
        return self.splits[k]

    def validation(self) -> tuple[np.ndarray, np.ndarray]:
        """The validation data: the carved validation part, else the test part (as the seeds do)."""
        if self.X_val is None:
            return self.X_test, self.y_test
        return self.X_val, self.y_val

    @property
    def optimistic(self) -> bool:
        """True when the validation data is the test part (``validation = "test"``, the seeds'
        generators by default): whatever the validation data decides -- early stopping, a grid's
        choice and refinement of λ -- was decided on the rows the test score is then measured on,
        so that score is optimistic."""
        return self.X_val is None

    @property
    def target_scale(self) -> tuple[float, float] | None:
        """``(mean, std)`` of the training targets in their original units when the regression
        targets were standardised (``y_* = (y - mean) / std``), else None."""
        scale = (self.info or {}).get("target_scale")
        return None if scale is None else (float(scale[0]), float(scale[1]))

    def to_original_units(self, values, kind: str = "value"):
        """``values`` computed on standardised targets, in the target's original units.

        ``kind``: ``"value"`` (predictions, targets: ``v * std + mean``), ``"error"`` (an absolute
        error, MAE or RMSE: ``v * std``) or ``"squared"`` (a squared error, the MSE loss: ``v * std**2``).
        Unchanged when the targets were not standardised (classification, ``standardize_target = false``).
        A float stays a float, anything else becomes a float64 array.
        """
        if kind not in _UNIT_KINDS:
            raise ValueError(f"The 'kind' parameter must be one of {', '.join(_UNIT_KINDS)}. Got {kind!r} instead.")
        scale = self.target_scale
        scalar = isinstance(values, (int, float, np.integer, np.floating))
        if scale is None:
            return values
        mean, std = scale
        x = np.asarray(values, dtype=np.float64)
        out = x * std + mean if kind == "value" else (x * std if kind == "error" else x * std * std)
        return float(out) if scalar else out

    def metrics_in_original_units(self, metrics: dict) -> dict:
        """A copy of ``metrics`` (a record's metrics or a history: name -> number or list) with MAE
        (``*mae``) in the target's units and losses (``*loss``, ``*penalty``, an MSE objective) in
        squared units, ``std**2`` times the standardised ones: the same objective, written for the
        original targets. Other entries (accuracy, epoch) and unstandardised datasets are unchanged."""
        out = {}
        for key, value in metrics.items():
            kind = unit_kind(key)
            if kind is None or self.target_scale is None:
                out[key] = value
            elif isinstance(value, (list, tuple)):
                out[key] = [float(v) for v in self.to_original_units(np.asarray(value, dtype=np.float64), kind)]
            elif value is None:
                out[key] = value
            else:
                out[key] = float(self.to_original_units(float(value), kind))
        return out


_UNIT_KINDS = ("value", "error", "squared")


def unit_kind(key: str) -> str | None:
    """How a metric or history entry named ``key`` scales with the target: ``"error"`` (MAE),
    ``"squared"`` (losses and penalties of the MSE objective) or None (accuracy, epoch, ...)."""
    key = str(key)
    if key.endswith("mae"):
        return "error"
    if key.endswith("loss") or key.endswith("penalty"):
        return "squared"
    return None


# ---------------------------------------------------------------------------------------------- spec


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, (bool, np.bool_)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:                      # an int too large for a float
        return False


# key: (datasets it applies to, allowed choices or (test, description))
_RULES = {
    "name": (NAMES, NAMES),
    "task": (NAMES, TASKS),
    "train": (SPLIT_BY_REGLAB, (lambda v: _is_int(v) and v >= 1, "an int >= 1")),
    "test_fraction": (SPLIT_BY_REGLAB, (lambda v: _is_real(v) and 0 < v < 1, "a float in (0, 1)")),
    "stratify": (NAMES, (lambda v: isinstance(v, bool), "true or false")),
    "cv": (SPLIT_BY_REGLAB, CV),
    "split_seed": (NAMES, (lambda v: _is_int(v) and 0 <= v < 2**32, "an int in [0, 2**32)")),
    "validation": (NAMES, (lambda v: (isinstance(v, str) and v == "test") or (_is_real(v) and 0 < v < 1),
                           '"test" or a float in (0, 1)')),
    "standardize": (NAMES, (lambda v: isinstance(v, bool), "true or false")),
    "standardize_target": (NAMES, (lambda v: isinstance(v, bool), "true or false")),
    "n_samples": (tuple(GENERATORS), (lambda v: _is_int(v) and 2 <= v <= MAX_GENERATED, "an int from 2 to 10000000")),
    "noise": (tuple(GENERATORS), (lambda v: _is_real(v) and v >= 0, "a float >= 0")),
    "random_state": (tuple(GENERATORS), (lambda v: _is_int(v) and 0 <= v < 2**32, "an int in [0, 2**32)")),
    "factor": (("circles",), (lambda v: _is_real(v) and 0 <= v < 1, "a float in [0, 1)")),
    "shape": (("digits",), SHAPES),
    "path": (FILES, (lambda v: isinstance(v, (str, os.PathLike)) and str(v) != "", "a file path")),
    "label": (("csv",), (lambda v: isinstance(v, str) and v != "", "a column name")),
    "weight": (("csv",), (lambda v: isinstance(v, str) and v != "", "a column name")),
    "features": (("csv",), (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(f, str) for f in v),
                            "a non-empty list of column names")),
    "categorical": (("csv",), (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(f, str) for f in v),
                               "a non-empty list of column names")),
    "delimiter": (("csv",), (lambda v: isinstance(v, str) and len(v) == 1 and v not in '"\r\n',
                             'one character, e.g. ";" or "\\t"')),
    "factory": (FACTORY, (lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v) is not None,
                          '"package.module:function"')),
    "args": (FACTORY, (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
                       "a table of keyword arguments")),
}


def _did_you_mean(word, options) -> str:
    lowered = {str(o).lower(): o for o in options}
    close = difflib.get_close_matches(str(word).lower(), lowered, n=1)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def _check_spec(spec) -> dict:
    """Validate every key where it enters; return a plain dict of the given values."""
    if not isinstance(spec, dict):
        raise DataError(f"[data] must be a table of keys such as name = \"moons\". Got {type(spec).__name__} instead.")
    for key in spec:
        if key not in _RULES:
            raise DataError(f"[data] has an unknown key {key!r}{_did_you_mean(key, _RULES)}; "
                            f"allowed keys are {', '.join(_RULES)}")
    if "factory" in spec and "name" not in spec:
        spec = {"name": "factory", **spec}
    if "name" not in spec:
        raise DataError(f"[data] needs name = one of {', '.join(NAMES)} (or factory = \"package.module:function\")")
    if spec["name"] == "factory" and "factory" not in spec:
        raise DataError('[data] name = "factory" needs factory = "package.module:function"')
    name = spec["name"]
    for key in sorted(spec, key=lambda k: k != "name"):                # name first: the others depend on it
        value, (applies, rule) = spec[key], _RULES[key]
        if isinstance(rule, tuple) and isinstance(rule[0], str):      # a list of choices
            if not isinstance(value, str) or value not in rule:
                noun = "a dataset" if key == "name" else f"a known {key}"
                raise DataError(f"[data] {key} = {value!r} is not {noun}{_did_you_mean(value, rule)}; "
                                f"choose one of {', '.join(rule)}")
        elif not rule[0](value):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:40] + f"... ({len(repr(value))} characters)"
            raise DataError(f"[data] key {key!r} must be {rule[1]}. Got {shown} instead.")
        if name not in applies:
            raise DataError(f"[data] key {key!r} does not apply to name = {name!r}; it applies to "
                            f"{', '.join(applies)}; remove it")
    if "train" in spec and "test_fraction" in spec:
        raise DataError("[data] gives both 'train' (first-n rows) and 'test_fraction'; keep one of them")
    if spec.get("cv") == "kfold":
        for key in ("train", "test_fraction"):
            if key in spec:
                raise DataError(f"[data] cv = \"kfold\" makes each of the K folds the test part once (1/K of the "
                                f"rows); remove {key!r} or use cv = \"shuffle\"")
    return dict(spec)


# ------------------------------------------------------------------------------------------- readers


def _resolve(spec, base_dir) -> tuple[Path, str]:
    if "path" not in spec:
        raise DataError(f"[data] name = {spec['name']!r} needs path = \"FILE\" (relative to the study file)")
    shown = str(spec["path"])
    try:
        path = Path(shown).expanduser()
    except RuntimeError:                       # "~someone/..." for a user that does not exist
        raise DataError(f"{shown}: the home folder in this path does not exist; fix `path` in [data]") from None
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    try:
        path.stat()
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            short = shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} characters)"
            raise DataError(f"{short}: cannot be opened ({e.strerror or e}); fix `path` in [data]") from None
    except ValueError:                         # e.g. a NUL character
        raise DataError(f"{shown!r}: is not a valid file path; fix `path` in [data]") from None
    if not path.exists():
        raise DataError(f"{shown}: file not found (looked for {path.resolve()}); fix `path` in [data]")
    if not path.is_file():
        raise DataError(f"{shown}: not a file (looked at {path.resolve()}); point `path` in [data] at a file")
    return path, shown


def _read_text(path: Path, shown: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{shown}: cannot be read ({e.strerror or e}); check its permissions") from None
    if not raw.strip():
        raise DataError(f"{shown}: the file is empty; it needs a header row and data rows")
    if b"\x00" in raw:
        raise DataError(f"{shown}: holds binary data, not CSV text; point `path` at a CSV file with a header row")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{shown}: is not UTF-8 text (undecodable byte on line {line}, offset {e.start}); "
                        f"save it as UTF-8 CSV") from None


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _read_csv(spec, path: Path, shown: str):
    text = _read_text(path, shown)
    delimiter = spec.get("delimiter", ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header, rows, lines = None, [], []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue                                              # blank line
            if header is None:
                header = [name.strip() for name in row]
            else:
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{shown}, line {reader.line_num}: cannot be parsed as CSV ({e}); "
                        f"check the quoting and `delimiter`") from None
    if header is None:
        raise DataError(f"{shown}: holds no rows, only blank lines; it needs a header row and data rows")
    label, features = _csv_columns(spec, header, shown, delimiter)
    if not rows:
        raise DataError(f"{shown}: has a header but no data rows; add rows below the header")

    categorical = _csv_categorical(spec, features, shown)
    columns = [header.index(name) for name in features]
    y_col = header.index(label)
    X = np.empty((len(rows), len(columns)), dtype=np.float64)
    texts = {k: [] for k, name in enumerate(features) if name in categorical}
    labels = []
    for i, row in enumerate(rows):
        where = f"{shown}, row {i + 1} (line {lines[i]})"
        if len(row) != len(header):
            raise DataError(f"{where}: has {len(row)} fields but the header has {len(header)}; "
                            f"fix the row or `delimiter`")
        for k, j in enumerate(columns):
            if k in texts:
                texts[k].append(_category(row[j].strip(), f"{where}, column {header[j]!r}"))
            else:
                X[i, k] = _cell(row[j].strip(), f"{where}, column {header[j]!r}")
        cell = row[y_col].strip()
        if not cell:
            raise DataError(f"{where}, column {label!r}: the label is empty; fill it in or drop the row")
        labels.append(cell)
    y = np.array(labels, dtype=str)
    weights = None
    if spec.get("weight") is not None:
        w_col = header.index(spec["weight"])
        weights = np.empty(len(rows), dtype=np.float64)
        for i, row in enumerate(rows):
            weights[i] = _cell(row[w_col].strip(), f"{shown}, row {i + 1} (line {lines[i]}), column {spec['weight']!r}")
            if weights[i] < 0:
                raise DataError(f"{shown}, row {i + 1} (line {lines[i]}), column {spec['weight']!r}: the weight "
                                f"{weights[i]:g} is negative; sample weights must be >= 0")
    X, names, onehot = _one_hot(X, list(features), texts)
    return X, y, names, lambda i: f"{shown}, row {i + 1} (line {lines[i]}), column {label!r}", \
        f"{shown}, column {label!r}", weights, onehot


def _csv_categorical(spec, features: list[str], shown: str) -> set[str]:
    """The `categorical` columns, checked against `features`."""
    categorical = spec.get("categorical", [])
    for j, name in enumerate(categorical):
        if name not in features:
            raise DataError(f"{shown}: `categorical` lists {name!r}, which is not a feature column; the features are "
                            f"{_columns(features)}; fix `categorical` (or `features`) in [data]")
        if name in categorical[:j]:
            raise DataError(f"{shown}: `categorical` lists {name!r} twice; list each column once")
    return set(categorical)


def _category(cell: str, where: str) -> str:
    if not cell:
        raise DataError(f"{where}: the cell is empty; fill it in (a category of its own, e.g. \"unknown\") or drop the row")
    return cell


def _one_hot(X: np.ndarray, names: list[str], texts: dict) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """Each categorical column (``texts``: column index → its cells) becomes one 0/1 column per
    category the file holds, in sorted order, named ``column=category``, where the column stood;
    also returns which columns are one-hot (None without categorical columns)."""
    if not texts:
        return X, names, None
    parts, out_names, onehot = [], [], []
    for k, name in enumerate(names):
        if k not in texts:
            parts.append(X[:, k:k + 1])
            out_names.append(name)
            onehot.append(False)
            continue
        cells = np.array(texts[k], dtype=str)
        categories = sorted(set(texts[k]))
        parts.append((cells[:, None] == np.array(categories, dtype=str)[None, :]).astype(np.float64))
        out_names += [f"{name}={c}" for c in categories]
        onehot += [True] * len(categories)
    return np.concatenate(parts, axis=1), out_names, np.array(onehot)


def _csv_columns(spec, header: list[str], shown: str, delimiter: str) -> tuple[str, list[str]]:
    """Check the header against `label` and `features`; return both."""
    for j, name in enumerate(header):
        if not name:
            raise DataError(f"{shown}: header column {j + 1} has no name; name every column in the first row")
        if name in header[:j]:
            raise DataError(f"{shown}: header names column {name!r} twice; give each column a unique name")
    if "label" not in spec:
        raise DataError(f"{shown}: [data] needs label = the label column's name; columns are {_columns(header)}")
    label = spec["label"]
    if label not in header:
        raise DataError(_missing_label(shown, header, label, delimiter))
    weight = spec.get("weight")
    if weight is not None:
        if weight not in header:
            raise DataError(f"{shown}: the weight column {weight!r} is not a column{_did_you_mean(weight, header)}; "
                            f"columns are {_columns(header)}; fix `weight` in [data]")
        if weight == label:
            raise DataError(f"{shown}: column {weight!r} is the label and cannot also be the weight column")
        if weight in spec.get("features", ()):
            raise DataError(f"{shown}: column {weight!r} is the weight column and cannot also be a feature; "
                            f"remove it from `features`")
    if "features" in spec:
        features = spec["features"]
        for j, name in enumerate(features):
            if name not in header:
                raise DataError(f"{shown}: requested feature {name!r} is not a column{_did_you_mean(name, header)}; "
                                f"columns are {_columns(header)}; fix `features` in [data]")
            if name == label:
                raise DataError(f"{shown}: column {name!r} is the label and cannot also be a feature; "
                                f"remove it from `features`")
            if name in features[:j]:
                raise DataError(f"{shown}: `features` lists {name!r} twice; list each column once")
    else:
        features = [name for name in header if name not in (label, weight)]
        if not features:
            raise DataError(f"{shown}: has no feature columns besides the label {label!r}; add feature columns")
    return label, features


def _cell(cell: str, where: str) -> float:
    if not cell:
        raise DataError(f"{where}: the cell is empty; fill it in or drop the row")
    value = _number(cell)
    if value is None:
        raise DataError(f"{where}: {cell!r} is not a number; fix the cell, list the column in `categorical` (one-hot "
                        f"encoded), or leave it out of `features`")
    if math.isnan(value):
        raise DataError(f"{where}: the cell is NaN; fill in a value or drop the row")
    if abs(value) > _FLOAT32_MAX:
        raise DataError(f"{where}: {cell!r} is infinite or beyond float32 range; fix the cell or drop the row")
    return value


def _columns(header) -> str:
    shown = ", ".join(repr(name) for name in header[:20])
    return shown + (f", ... ({len(header)} in all)" if len(header) > 20 else "")


def _missing_label(shown, header, label, delimiter) -> str:
    if len(header) == 1:
        for guess in (",", ";", "\t", "|"):
            if guess != delimiter and guess in header[0]:
                return (f"{shown}: the header reads as one column {header[0]!r}, so there is no label column "
                        f"{label!r}; the delimiter looks like {guess!r}: set delimiter = {guess!r} in [data]")
    hint = ""
    if all(_number(name) is not None for name in header):
        hint = "; the first row looks like data: add a header row"
    return (f"{shown}: no label column {label!r}{_did_you_mean(label, header)}; "
            f"columns are {_columns(header)}{hint or '; set label = one of them in [data]'}")


# What a damaged .npz raises from NumPy and zipfile: a corrupt deflate stream (zlib.error), an
# unsupported or encrypted member (NotImplementedError, RuntimeError), a header claiming a huge array.
_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
               MemoryError, KeyError)


def _read_npz(path: Path, shown: str):
    fix = "save it with np.savez(path, X=X, y=y)"
    try:
        archive = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as e:
        raise DataError(f"{shown}: not a NumPy .npz file ({_one_line(e)}); {fix}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{shown}: holds a single array, not the arrays X and y; {fix}")
    with archive:
        for key in ("X", "y"):
            if key not in archive.files:
                held = ", ".join(archive.files) or "nothing"
                raise DataError(f"{shown}: has no array {key!r} (it holds {held}); {fix}")
        try:
            X, y = archive["X"], archive["y"]
        except _NPZ_ERRORS as e:
            raise DataError(f"{shown}: arrays X and y cannot be read ({_one_line(e)}); {fix}") from None
    if X.dtype.kind not in "biuf":
        raise DataError(f"{shown}: X has dtype {X.dtype}; it must hold numbers")
    if X.ndim < 2:
        raise DataError(f"{shown}: X has shape {X.shape}; it needs one row per sample, e.g. X.reshape(-1, 1) "
                        f"for a single feature")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise DataError(f"{shown}: y has shape {y.shape}; it must be 1-D, one label per row of X")
    if len(X) != len(y):
        raise DataError(f"{shown}: X has {len(X)} rows but y has {len(y)}; they must match")
    if len(X) == 0:
        raise DataError(f"{shown}: X and y are empty; the file needs data rows")
    if X.dtype.kind == "f":
        bad = np.argwhere(~np.isfinite(X) | (np.abs(X) > _FLOAT32_MAX))
        if len(bad):
            index = tuple(int(i) for i in bad[0])
            raise DataError(f"{shown}: X[{', '.join(map(str, index))}] = {float(X[index])!r} is NaN, infinite or "
                            f"beyond float32 range; fix or drop that row")
    if y.dtype.kind == "S":
        try:
            y = y.astype(str)
        except UnicodeDecodeError:
            raise DataError(f"{shown}: y holds bytes that are not text; store labels as numbers or str") from None
    if y.dtype.kind not in "biufU":
        raise DataError(f"{shown}: y has dtype {y.dtype}; it must hold numbers or strings")
    return X.astype(np.float64), y, None, lambda i: f"{shown}, y[{i}]", f"{shown}, y"


def _one_line(error) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _read_builtin(name: str, spec: dict):
    from sklearn import datasets
    if name in GENERATORS:
        params = {**GENERATORS[name], **{k: spec[k] for k in GENERATORS[name] if k in spec}}
        make = datasets.make_moons if name == "moons" else datasets.make_circles
        X, y = make(**params)
        source = f"sklearn.datasets.make_{name}({', '.join(f'{k}={v!r}' for k, v in params.items())})"
        return X, y, ["x0", "x1"], source, None
    bunch = getattr(datasets, f"load_{name}")()
    names = [str(n) for n in bunch.feature_names]
    class_names = None if name == "diabetes" else [str(n) for n in bunch.target_names]
    return bunch.data.astype(np.float64), bunch.target, names, f"sklearn.datasets.load_{name}()", class_names


# -------------------------------------------------------------------------------------------- labels


def _labels(y: np.ndarray, task: str | None, infer_strictly: bool, where, whole: str):
    """Return (encoded labels, task, classes): int64 0..k-1 in sorted label order, or float32 targets."""
    if y.dtype.kind == "U":
        values = [_number(v) for v in y]
        if all(v is not None for v in values):
            y = np.array(values, dtype=np.float64)
    numeric = y.dtype.kind in "biuf"
    if numeric:
        y = y.astype(np.int64 if y.dtype.kind == "b" else y.dtype)
        if y.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(y) | (np.abs(y) > _FLOAT32_MAX))
            if bad.size:
                raise DataError(f"{where(bad[0])}: label {float(y[bad[0]])!r} is NaN, infinite or beyond float32 "
                                f"range; fix or drop that row")
    integral = numeric and (y.dtype.kind != "f" or bool(np.all(y == np.round(y))))
    if task is None and numeric and not integral:
        task = "regression"
    if task == "regression":
        if not numeric:
            i = next(i for i, v in enumerate(y) if _number(v) is None)
            raise DataError(f"{where(i)}: {str(y[i])!r} is not a number, but task = \"regression\"; "
                            f"fix the label or set task = \"binary\" or \"multiclass\"")
        y = y.astype(np.float64)
        if np.abs(y).max() > _FLOAT32_MAX:
            i = int(np.argmax(np.abs(y)))
            raise DataError(f"{where(i)}: label {float(y[i])!r} is beyond float32 range; rescale the target")
        return y.astype(np.float32), task, None
    if numeric and not integral:
        i = int(np.flatnonzero(y != np.round(y))[0])
        raise DataError(f"{where(i)}: {float(y[i])!r} is not an integer class label, but task = {task!r}; "
                        f"set task = \"regression\" or fix the label")
    classes, encoded = np.unique(y, return_inverse=True)
    shown = [int(c) if numeric else str(c) for c in classes]
    if len(classes) < 2:
        raise DataError(f"{whole}: every label is {shown[0]!r}, a single class; a classifier needs at least 2 "
                        f"classes — check the label column")
    if task is None:
        task = "binary" if len(classes) == 2 else "multiclass"
        if infer_strictly and numeric and len(classes) > 20 and len(classes) > 0.1 * len(y):
            raise DataError(f"{whole}: holds {len(classes)} distinct integer values in {len(y)} rows; if they are "
                            f"targets set task = \"regression\", if classes set task = \"multiclass\" in [data]")
    elif task == "binary" and len(classes) != 2:
        raise DataError(f"{whole}: task = \"binary\" needs exactly 2 classes but the labels hold {len(classes)} "
                        f"({_columns(shown)}); set task = \"multiclass\"")
    return encoded.reshape(-1).astype(np.int64), task, shown


# --------------------------------------------------------------------------------------------- split


def _rows_needed(fraction: float, per_part: int) -> int:
    n = 2
    while math.ceil(fraction * n) < per_part or n - math.ceil(fraction * n) < per_part:
        n += 1
    return n


def _fraction_split(y, fraction, stratify, seed, *, what: str, part: str, class_labels, held: int | None = None):
    """Indices (keep, held_out) of a shuffled split; ceil(fraction * n) rows (or ``held``) are held out."""
    from sklearn.model_selection import train_test_split
    n = len(y)
    per_part = 1
    if stratify:
        classes, counts = np.unique(y, return_counts=True)
        if counts.min() < 2:
            rare = class_labels[int(classes[counts.argmin()])]
            raise DataError(f"{part}: class {rare!r} has only 1 row, but the stratified "
                            f"split {what} needs at least 2 per class; add rows or set stratify = false")
        per_part = len(classes)
    if held is not None:
        if held < per_part or n - held < per_part:
            over = f" stratified over {per_part} classes" if stratify else ""
            raise DataError(f"{part}: the split {what}{over} needs at least {per_part} rows in each part, but it "
                            f"has {n - held} and {held}; add rows or change the split")
        return train_test_split(np.arange(n), test_size=held, random_state=seed, shuffle=True,
                                stratify=y if stratify else None)
    held = math.ceil(fraction * n)
    if held < per_part or n - held < per_part:
        needed = _rows_needed(fraction, per_part)
        over = f" stratified over {per_part} classes" if stratify else ""
        raise DataError(f"{part}: the split {what}{over} needs at least {needed} rows, but there are {n}; "
                        f"add rows or change the fraction")
    keep, out = train_test_split(np.arange(n), test_size=held, random_state=seed, shuffle=True,
                                 stratify=y if stratify else None)
    return keep, out


def _validation(spec, name, y, train, stratify, seed, part, classes):
    """(training rows, validation rows or None, description) after carving the validation part.

    An explicit ``validation = f`` carves ``ceil(f * n_train)`` rows (stratified when the split is)
    or raises; ``validation = "test"`` keeps none (the test part validates). By default the seeds'
    generators validate on the test part and every other dataset carves ``VALIDATION_FRACTION``;
    a training part too small for that falls back to a random carve, then to the test part, and
    the description says why.
    """
    default = "test" if name in VALIDATION_ON_TEST_BY_DEFAULT else VALIDATION_FRACTION
    validation = spec.get("validation", default)
    if validation == "test":
        why = "validation = \"test\"" if "validation" in spec else f"the default for {name!r}, the seeds' protocol"
        return train, None, f"the test part ({why}): the test score is optimistic where it stopped training or chose λ"
    where = f"{part} (training part of {len(train)} rows)"
    what = f"validation = {validation}"
    attempts = [stratify, False] if stratify and "validation" not in spec else [stratify]
    for i, strata in enumerate(attempts):
        try:
            keep, held = _fraction_split(y[train], validation, strata, seed, what=what, part=where,
                                         class_labels=classes)
        except DataError:
            if "validation" in spec:
                raise
            continue
        note = "" if i == 0 else ", not stratified: a class has too few training rows"
        return train[keep], train[held], (f"{len(held)} rows carved from the training part ({validation:g}"
                                          f"{', stratified' if strata else ''}{note}, split_seed {seed}), "
                                          f"not trained on")
    return train, None, (f"the test part (the training part of {len(train)} rows is too small to carve a "
                         f"validation part of {validation:g} from): the test score is optimistic where it stopped "
                         f"training or chose λ")


def _standardized_targets(y: np.ndarray, train: np.ndarray):
    """Regression targets standardised with the training rows' mean and std (a constant target: std 1)."""
    y64 = y.astype(np.float64)
    mean = float(y64[train].mean()) if len(train) else 0.0
    std = float(y64[train].std()) if len(train) else 1.0
    if not std > 64 * np.finfo(np.float64).eps * float(np.abs(y64[train]).max(initial=0.0)):
        std = 1.0
    return ((y64 - mean) / std).astype(np.float32), (mean, std)


# ---------------------------------------------------------------------------------------------- load


def load(spec: dict, *, base_dir: str | Path | None = None, splits: int = 1) -> Dataset:
    """Load the dataset described by a study file's ``[data]`` table; see the module docstring.

    Relative paths are resolved against ``base_dir`` (the study file's folder), else the working directory.
    ``splits = K > 1`` draws K train/test splits (``cv``, see the module docstring): the dataset
    returned is split 0 and its ``splits`` lists all K.
    """
    spec = _check_spec(spec)
    if isinstance(splits, bool) or not isinstance(splits, (int, np.integer)) or not 1 <= splits <= MAX_SPLITS:
        raise DataError(f"splits must be an int from 1 to {MAX_SPLITS} (the number of train/test splits). "
                        f"Got {splits!r} instead.")
    splits = int(splits)
    name = spec["name"]
    if name == "factory":
        return _from_factory(spec, base_dir, splits)
    class_names = None
    if name in FILES:
        path, source = _resolve(spec, base_dir)
        read = _read_csv if name == "csv" else (lambda s, p, shown: (*_read_npz(p, shown), None, None))
        X, raw_y, feature_names, where, whole, weights, onehot = read(spec, path, source)
        default_task, infer_strictly = None, True
    else:
        X, raw_y, feature_names, source, class_names = _read_builtin(name, spec)
        weights = onehot = None
        where, whole = (lambda i: f"dataset {name!r}, target[{i}]"), f"dataset {name!r}"
        default_task, infer_strictly = ("regression" if name == "diabetes" else None), False
    part = source if name in FILES else f"dataset {name!r}"
    y, task, classes = _labels(raw_y, spec.get("task", default_task), infer_strictly, where, whole)
    classify = task != "regression"
    stratify = spec.get("stratify", classify)
    if stratify and not classify:
        raise DataError(f"{part}: stratify = true needs class labels, but the task is regression; remove stratify")
    seed = spec.get("split_seed", 0)
    common = dict(spec=spec, name=name, X=X, y=y, task=task, classes=classes, class_names=class_names,
                  feature_names=feature_names, source=source, part=part, stratify=stratify, weights=weights,
                  onehot=onehot)
    datasets = [_assemble(**common, train=train, test=test, split=split, seed=split_seed)
                for train, test, split, split_seed in _splits(spec, name, y, stratify, seed, splits, part, classes)]
    if splits > 1:
        cv = spec.get("cv", "shuffle")
        for k, ds in enumerate(datasets):
            ds.splits = datasets
            ds.info.update({"split_index": k, "splits": splits, "cv": cv})
    return datasets[0]


def _splits(spec, name, y, stratify, seed, splits, part, classes):
    """(train rows, test rows, description, seed of the split's validation carve) for each split."""
    n = len(y)
    cv = spec.get("cv", "shuffle")
    of = f"split {{k}} of {splits}: " if splits > 1 else ""
    if cv == "kfold":
        if splits < 2:
            raise DataError(f"{part}: cv = \"kfold\" needs at least 2 splits (the number of folds); set the "
                            f"study's splits = 5, say, or use cv = \"shuffle\"")
        from sklearn.model_selection import KFold, StratifiedKFold
        if stratify:
            labels, counts = np.unique(y, return_counts=True)
            if counts.min() < splits:
                rare = classes[int(labels[counts.argmin()])]
                raise DataError(f"{part}: cv = \"kfold\" with splits = {splits} puts every class in each fold's test "
                                f"part, but class {rare!r} has only {int(counts.min())} rows; lower splits to at most "
                                f"{int(counts.min())}, set stratify = false, or use cv = \"shuffle\"")
            folds = StratifiedKFold(splits, shuffle=True, random_state=seed).split(np.zeros(n), y)
        else:
            if n < 2 * splits:
                raise DataError(f"{part}: cv = \"kfold\" with splits = {splits} needs at least {2 * splits} rows (each "
                                f"fold's training part holds the other folds), but there are {n}; lower splits or "
                                f"add rows")
            folds = KFold(splits, shuffle=True, random_state=seed).split(np.zeros(n))
        for k, (train, test) in enumerate(folds):
            yield (train, test, f"split {k} of {splits}: fold {k} of a {splits}-fold partition tests (split_seed "
                                f"{seed}{', stratified' if stratify else ''}): {len(train)} train, {len(test)} test",
                   (seed + k) % 2**32)
        return
    if "train" in spec or (name in GENERATORS and "test_fraction" not in spec):
        n_train = spec.get("train", GENERATOR_TRAIN_ROWS)
        if n_train >= n:
            raise DataError(f"{part}: train = {n_train} needs at least {n_train + 1} rows (the rest are the test "
                            f"part), but there are {n}; lower `train` or add rows")
        if splits == 1:
            yield (np.arange(n_train), np.arange(n_train, n),
                   f"first {n_train} rows train, remaining {n - n_train} test", seed)
            return
        for k in range(splits):
            k_seed = (seed + k) % 2**32
            train, test = _fraction_split(y, None, stratify, k_seed, what=f"train = {n_train} (split {k} of {splits})",
                                          part=part, class_labels=classes, held=n - n_train)
            yield (train, test, f"split {k} of {splits}: {n_train} rows drawn to train (split_seed {k_seed}"
                                f"{', stratified' if stratify else ''}), remaining {n - n_train} test", k_seed)
        return
    fraction = spec.get("test_fraction", TEST_FRACTION)
    for k in range(splits):
        k_seed = (seed + k) % 2**32
        train, test = _fraction_split(y, fraction, stratify, k_seed, what=f"test_fraction = {fraction}", part=part,
                                      class_labels=classes)
        yield (train, test, (f"{of.format(k=k)}shuffled (split_seed {k_seed}){', stratified' if stratify else ''}: "
                             f"{len(train)} train, {len(test)} test (test_fraction {fraction})"), k_seed)


def _assemble(*, spec, name, X, y, task, classes, class_names, feature_names, source, part, stratify, train, test,
              split, seed, given_val=None, weights=None, onehot=None) -> Dataset:
    """One train/test split's dataset: its validation part carved (or ``given_val``), standardisation
    (and the target's) fitted on its training rows; ``onehot`` columns (categorical) stay 0/1."""
    n = len(y)
    # A training part of a single class is not refused: the study trains and its summary says so
    # (reglab.study.runner: the diagnosis "one class in training" and a warning with the fix).
    if given_val is not None:
        val, validation = given_val, "the factory's validation part"
    else:
        train, val, validation = _validation(spec, name, y, train, stratify, seed, part, classes)
    standardize = spec.get("standardize", name in STANDARDIZED_BY_DEFAULT)
    flat = X.reshape(n, -1)
    if standardize:
        mean = flat[train].mean(axis=0)
        std = flat[train].std(axis=0)
        # a constant feature stays finite: a spread of float rounding only (0.1 summed n times) is none
        std[std <= 64 * np.finfo(np.float64).eps * np.abs(flat[train]).max(axis=0, initial=0.0)] = 1.0
        if onehot is not None:
            mean[onehot], std[onehot] = 0.0, 1.0
        flat = (flat - mean) / std
        scaling = "standardized with the training part's mean and std" + (
            " (one-hot columns kept 0/1)" if onehot is not None else "")
    elif name == "digits":
        flat = flat / 16.0
        scaling = "divided by 16 (pixel range 0..16 to 0..1)"
    else:
        scaling = "none"
    # Integer features that are not rescaled (token ids, codes, counts) stay integers: a model with an
    # nn.Embedding gets them as ids; any other model gets them as floats (reglab.training.as_tensors).
    integral = (name in FILES or name == "factory") and not standardize and bool(np.all(np.isfinite(flat))) and bool(np.all(flat == np.round(flat)))
    X = flat.reshape(X.shape).astype(np.int64 if integral else np.float32)
    standardize_target = spec.get("standardize_target", True)
    target_scale = None
    if standardize_target and task == "regression":
        y, target_scale = _standardized_targets(y, train)
    shape = spec.get("shape", "flat")
    if name == "digits" and shape != "flat":
        X = X.reshape((n, 1, 8, 8) if shape == "image" else (n, 8, 8))   # sequence: 8 steps (rows) x 8 features

    def part_of(index):
        return (None, None) if index is None else (X[index], y[index])

    info = {"name": name, "source": source, "rows": n, "task": task, "split": split, "validation": validation,
            "validation_part": "test" if val is None else "carved", "optimistic": val is None,
            "standardized": bool(standardize), "scaling": scaling, "integer_inputs": integral,
            "shapes": {"train": list(X[train].shape), "test": list(X[test].shape),
                       **({"val": list(X[val].shape)} if val is not None else {})}}
    if task == "regression":
        info["target_standardized"] = target_scale is not None
        if target_scale is not None:
            info["target_scale"] = [float(target_scale[0]), float(target_scale[1])]
            info["target_scaling"] = (f"standardized with the training part's mean {target_scale[0]:.6g} and std "
                                      f"{target_scale[1]:.6g}; MAE and losses are reported in the original units")
    if classes is not None:
        info["classes"] = classes                                     # original label of class index i
    if class_names is not None:
        info["class_names"] = class_names
    if name == "digits":
        info["shape"] = shape
    if weights is not None:
        info["sample_weight"] = (f"column {spec['weight']!r} weighs each training row's loss (Keras's sample_weight); "
                                 "validation and test scores are unweighted")
    return Dataset(name=name, task=task, X_train=X[train], y_train=y[train], X_test=X[test], y_test=y[test],
                   X_val=part_of(val)[0], y_val=part_of(val)[1], feature_names=feature_names, info=info,
                   w_train=None if weights is None else weights[train].astype(np.float32))


# --------------------------------------------------------------------------------------- data factory


def _from_factory(spec, base_dir, splits) -> Dataset:
    """``[data] factory = "pkg.mod:fn"``: ``fn(**args)`` returns ``(train, test)`` or ``(train, test,
    validation)`` (or a dict with those keys), each ``(X, y)`` arrays/tensors, a map-style torch
    Dataset of ``(x, y)`` pairs or a DataLoader. The parts are read into memory once (a study keeps
    its data as arrays; train data larger than memory through the Python API, reglab.sources).
    Without a validation part one is carved from the training part as for files (``validation``)."""
    ref = spec["factory"]
    if splits > 1:
        raise DataError(f"[data] factory {ref!r} gives one train/test split; remove the study's 'splits' "
                        "(or return another split from the factory)")
    from .study.spec import StudyError, resolve_factory

    try:
        fn = resolve_factory(ref, Path(base_dir) if base_dir is not None else Path.cwd(), what="data.factory")
    except StudyError as exc:
        raise DataError(str(exc)) from None
    try:
        parts = fn(**spec.get("args", {}))
    except Exception as exc:   # noqa: BLE001 - the user's code: one line naming it
        raise DataError(f"[data] factory {ref!r} raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                        "fix the factory") from None
    if isinstance(parts, dict):
        unknown = set(parts) - {"train", "test", "validation"}
        if unknown or not {"train", "test"} <= set(parts):
            raise DataError(f"[data] factory {ref!r} must return train and test (and optionally validation); "
                            f"got keys {sorted(parts)}")
        parts = (parts["train"], parts["test"]) + ((parts["validation"],) if parts.get("validation") is not None else ())
    if not isinstance(parts, (tuple, list)) or len(parts) not in (2, 3):
        raise DataError(f"[data] factory {ref!r} must return (train, test) or (train, test, validation); "
                        f"got {type(parts).__name__}")
    names = ("train", "test", "validation")
    arrays = [_materialize(p, f"[data] factory {ref!r}: its {names[i]} part") for i, p in enumerate(parts)]
    shapes = {a[0].shape[1:] for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"[data] factory {ref!r}: its parts have inputs of different shapes {sorted(shapes)}")
    X = np.concatenate([a[0] for a in arrays])
    raw_y = np.concatenate([a[1] for a in arrays])
    where = lambda i: f"[data] factory {ref!r}, target[{i}]"   # noqa: E731
    y, task, classes = _labels(raw_y, spec.get("task"), True, where, f"[data] factory {ref!r}")
    sizes = np.cumsum([0] + [len(a[1]) for a in arrays])
    train, test = np.arange(sizes[0], sizes[1]), np.arange(sizes[1], sizes[2])
    val = np.arange(sizes[2], sizes[3]) if len(arrays) == 3 else None
    stratify = spec.get("stratify", task != "regression")
    return _assemble(spec=spec, name="factory", X=X, y=y, task=task, classes=classes, class_names=None,
                     feature_names=None, source=f"factory {ref}", part=f"[data] factory {ref!r}", stratify=stratify,
                     train=train, test=test, split="the factory's train and test parts", seed=spec.get("split_seed", 0),
                     given_val=val)


def _materialize(part, shown: str):
    """``(X, y)`` NumPy arrays from a pair of arrays/tensors, a map-style Dataset or a DataLoader."""
    import torch
    from torch.utils.data import DataLoader, Dataset as TorchDataset

    from .sources import DatasetSource, LoaderSource

    try:
        if isinstance(part, DataLoader):
            batches = list(LoaderSource(part, shown).epoch())
            X, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        elif isinstance(part, TorchDataset):
            src = DatasetSource(part, shown)
            chunks = [src.fetch(list(range(s, min(s + 1024, src.n)))) for s in range(0, src.n, 1024)]
            X, y = torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
        elif isinstance(part, (tuple, list)) and len(part) == 2:
            X, y = part
        else:
            raise TypeError(f"must be (X, y), a torch Dataset or a DataLoader; got {type(part).__name__}")
        X = X.numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{shown} {exc}") from None
    if len(X) != len(y) or len(X) == 0:
        raise DataError(f"{shown} has {len(X)} inputs and {len(y)} targets; give as many of each, at least one")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{shown} has inputs of dtype {X.dtype}; give numbers")
    return X, y.reshape(len(y)) if y.ndim == 2 and y.shape[1] == 1 else y
