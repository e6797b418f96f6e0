"""A study variant as complete, runnable PyTorch code: build the model, attach its regularization,
train it with :func:`reglab.fit` under the variant's exact training settings.

The code is what a study's summary shows as "the winning configuration, as PyTorch code". It is
written from what the study built, so that running it builds the same model:

- a layer-line model (``model.layers``) becomes the ``nn.Sequential`` of the torch modules the
  study built from the lines (inserted and replaced layers included), e.g. ``nn.Linear(2, 500)``,
  ``nn.ReLU()``, ``nn.Dropout(p=0.5)``, ``reglab.GaussianNoise(stddev=0.1)``, followed by the
  ``reglab.regularize(...)`` lines of what is attached to them (penalties, constraints, activity
  penalties with their convention);
- a factory model (``model.factory = "pkg.mod:fn"``) becomes ``from pkg.mod import fn`` and
  ``model = fn()``, followed by one ``reglab.regularize(...)`` line per module of the variant's
  ``rules`` (as the study attaches them on top of what the factory returns);
- training is one ``reglab.fit(model, train, validation, ...)`` call with the settings the study
  trained the variant with (epochs, batch size, optimizer, learning rate, weight decay, momentum,
  preset, early stopping as a ``reglab.EarlyStopping`` callback) and the seed. ``train`` and
  ``validation`` are left for the user to define.

Nothing here evaluates code: the text is built from the modules' attributes.

>>> from reglab.study import from_dict, build
>>> study = from_dict({"name": "s", "data": {"name": "moons"}, "training": {"epochs": 5},
...                    "model": {"layers": ["Dense(8, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]},
...                    "variants": {"dropout": {"insert": {"0": "Dropout(0.5)"}}}})
>>> v = study.variants[0]
>>> code = variant_snippet(study, v, build(v.layers, (2,)), task="binary")
>>> print(code[code.index("from torch"):])
from torch import nn
<BLANKLINE>
import reglab
<BLANKLINE>
# the model outputs logits: reglab.fit's loss applies the sigmoid / softmax
model = nn.Sequential(
    nn.Linear(2, 8),
    nn.ReLU(),
    nn.Dropout(p=0.5),
    nn.Linear(8, 1),
)
<BLANKLINE>
history = reglab.fit(
    model, train, validation,
    epochs=5, task='binary', preset='keras', seed=0,
)
"""

from __future__ import annotations

import ast
import inspect
import keyword
import math
from pathlib import Path

from torch import nn

from .. import augment as A
from .. import constraints as C
from .. import layers as L
from .. import penalties as R

__all__ = ["build_code", "variant_snippet"]

DATA_NOTE = ("# train = (X_train, y_train); validation = (X_val, y_val): your data, as NumPy arrays or tensors,\n"
             "# scaled as the study scaled its data (the strengths below were chosen for that scale)")
FIT_DEFAULT_EPOCHS = 100      # a study's epochs when its [training] does not say (study.train.execute)
# Names the snippet itself binds: a factory function of one of these names is imported under another.
_TAKEN = {"model", "history", "train", "validation", "reglab", "nn", "torch"}


def variant_snippet(study, variant, model: nn.Module, *, task: str | None = None, seed: int = 0) -> str:
    """``variant`` of ``study`` as runnable PyTorch code (see the module's docstring).

    ``model`` is the model the study built for the variant (its modules and attached
    regularization are written out); ``task`` ("binary", "multiclass", "regression") is passed to
    ``reglab.fit`` when given; ``seed`` is the seed of the run: with the study's data the code
    trains the same member the study trained with that seed. ``study`` may be None (then the
    header names no study and a factory model's function cannot be named).

    Never raises: a model whose definition cannot be written as code (a module type this module
    does not know) gets a comment in its place, and the rest of the snippet is still written.
    """
    try:
        return _snippet(study, variant, model, task, seed)
    except Exception as exc:   # noqa: BLE001 - a summary line must never stop a study's run
        from .. import diagnose

        return (f"# the configuration could not be written out in full ({type(exc).__name__}: {exc});\n"
                f"# its regularization:\n{diagnose.snippet(model)}")


def _snippet(study, variant, model, task, seed) -> str:
    is_factory = variant.layers is None
    head = [f"# Variant {variant.name!r}" + (f" of the study {study.name!r}" if study is not None else "")
            + ", as PyTorch code.", DATA_NOTE]
    if study is not None and study.data:
        head.append("# (the study's data: " + _one_line(_table_text(study.data)) + ")")
    imports, body = _model_lines(study, variant, model)
    if not is_factory and task in ("binary", "multiclass"):
        body.insert(0, "# the model outputs logits: reglab.fit's loss applies the sigmoid / softmax")
    weighted = study is not None and bool((study.data or {}).get("weight"))
    if weighted:
        head.append(f"# w_train: the training rows' weights (column {study.data['weight']!r} of the data)")
    body += [""] + _fit_lines(variant.training, task, seed, weighted)
    return "\n".join(head + [""] + imports + [""] + body) + "\n"


def _model_lines(study, variant, model) -> tuple[list[str], list[str]]:
    """The imports and the lines that bind ``model``: the model built and its regularization attached."""
    if variant.layers is None:
        factory = study.model.get("factory") if study is not None else None
        return ["import reglab"], (_factory_lines(factory, variant.args)
                                   + _rule_lines(variant.rules, variant.activity_convention))
    return ["from torch import nn", "", "import reglab"], _sequential_lines(model) + _attached_lines(model)


def build_code(study, variant, model: nn.Module) -> str:
    """``variant``'s architecture as a Python module whose ``build()`` returns the model (its
    regularization attached, its weights freshly initialised): what ``reglab run --save-models``
    writes beside the members' weights, so that ``build().load_state_dict(weights)`` restores one.

    The lines are :func:`variant_snippet`'s, without the training. A factory model's module is
    imported from the study file's folder, which the code puts on ``sys.path``, as the study did.
    A model that cannot be written as code gives a ``build()`` that raises NotImplementedError.
    """
    head = [f"# Variant {variant.name!r}" + (f" of the study {study.name!r}" if study is not None else "")
            + ": build() gives the model the saved weights fit (reglab run --save-models).",
            "# model = build(); model.load_state_dict(safetensors.torch.load_file(PATH)); then",
            "# reglab.predict(model, X) / reglab.predict_proba(model, X), X scaled as the study scaled its data."]
    try:
        imports, body = _model_lines(study, variant, model)
    except Exception as exc:   # noqa: BLE001 - the weights are saved even when the code cannot be written
        reason = _one_line(f"the model cannot be written as code ({type(exc).__name__}: {exc})")
        return "\n".join(head + ["", "", "def build():", f"    raise NotImplementedError({reason!r})"]) + "\n"
    if variant.layers is None and study is not None and study.model.get("factory"):
        folder = str(Path(study.base_dir).resolve())
        imports = ["import sys", "", *imports, "",
                   f"STUDY_FOLDER = {folder!r}   # where the study imported model.factory from",
                   "if STUDY_FOLDER not in sys.path:", "    sys.path.insert(0, STUDY_FOLDER)"]
    body = ["    " + line if line else "" for text in body for line in text.split("\n")]
    return "\n".join(head + [""] + imports + ["", "", "def build():"] + body + ["    return model"]) + "\n"


# ---------------------------------------------------------------------------------- the model

def _sequential_lines(model: nn.Module) -> list[str]:
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"a layer-line model is an nn.Sequential, not {type(model).__name__}")
    return ["model = " + _module_code(model, 0)]


def _module_code(module: nn.Module, depth: int) -> str:
    if type(module) is nn.Sequential:
        pad = "    " * (depth + 1)
        inner = "".join(f"{pad}{_module_code(child, depth + 1)},\n" for child in module)
        return f"nn.Sequential(\n{inner}{'    ' * depth})"
    return _leaf_code(module)


def _call(name: str, *args, **kwargs) -> str:
    parts = [_literal(a) for a in args] + [f"{k}={_literal(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def _literal(value) -> str:
    """A Python literal for ``value`` (numbers, strings, bools, None, tuples) that reads back equal."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} has no literal")
    if isinstance(value, (bool, int, float, str)) or value is None:
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    raise ValueError(f"{value!r} has no literal")


def _options(module, defaults: dict) -> dict:
    """The attributes of ``module`` named in ``defaults`` whose value differs from the default."""
    out = {}
    for name, default in defaults.items():
        value = getattr(module, name)
        if value != default:
            out[name] = value
    return out


_PLAIN = (nn.Identity, nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.SELU, nn.SiLU, nn.Softsign, nn.Hardsigmoid,
          nn.Flatten, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Softplus, nn.Softmax)
_PLAIN_DEFAULTS = {nn.Flatten: {"start_dim": 1, "end_dim": -1}, nn.LeakyReLU: {"negative_slope": 0.01},
                   nn.ELU: {"alpha": 1.0}, nn.GELU: {"approximate": "none"},
                   nn.Softplus: {"beta": 1.0, "threshold": 20.0}, nn.Softmax: {"dim": None}}


def _leaf_code(m: nn.Module) -> str:
    kind = type(m)
    if kind is nn.Linear:
        return _call("nn.Linear", m.in_features, m.out_features, **({} if m.bias is not None else {"bias": False}))
    if kind in (nn.Conv1d, nn.Conv2d):
        extra = _options(m, {"stride": (1,) * len(m.kernel_size), "padding": (0,) * len(m.kernel_size),
                             "dilation": (1,) * len(m.kernel_size), "groups": 1, "padding_mode": "zeros"})
        if m.bias is None:
            extra["bias"] = False
        return _call(f"nn.{kind.__name__}", m.in_channels, m.out_channels, kernel_size=m.kernel_size, **extra)
    if kind in (nn.RNN, nn.LSTM, nn.GRU):
        extra = _options(m, {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
                             "bidirectional": False})
        if kind is nn.RNN and m.nonlinearity != "tanh":
            extra["nonlinearity"] = m.nonlinearity
        if kind is nn.LSTM and m.proj_size:
            extra["proj_size"] = m.proj_size
        return _call(f"nn.{kind.__name__}", m.input_size, m.hidden_size, **extra)
    if kind in (nn.MaxPool1d, nn.MaxPool2d):
        return _call(f"nn.{kind.__name__}", m.kernel_size, stride=m.stride,
                     **_options(m, {"padding": 0, "dilation": 1, "return_indices": False, "ceil_mode": False}))
    if kind in (nn.AvgPool1d, nn.AvgPool2d):
        pad = (0,) if kind is nn.AvgPool1d else 0
        defaults = {"padding": pad, "ceil_mode": False, "count_include_pad": True}
        if kind is nn.AvgPool2d:
            defaults["divisor_override"] = None
        return _call(f"nn.{kind.__name__}", m.kernel_size, stride=m.stride, **_options(m, defaults))
    if kind in (nn.Dropout, nn.Dropout1d, nn.Dropout2d):
        return _call(f"nn.{kind.__name__}", p=m.p, **({"inplace": True} if m.inplace else {}))
    if kind is nn.Embedding:
        if m.padding_idx is not None or m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
            raise TypeError("an nn.Embedding with options cannot be written as code")
        return _call("nn.Embedding", m.num_embeddings, m.embedding_dim)
    if kind is nn.LayerNorm and len(m.normalized_shape) == 1:
        extra = {} if m.elementwise_affine else {"elementwise_affine": False}
        if m.elementwise_affine and m.bias is None:
            extra["bias"] = False
        return _call("nn.LayerNorm", m.normalized_shape[0], eps=m.eps, **extra)
    if kind is L.KerasBatchNorm:
        return _call("reglab.KerasBatchNorm", m.num_features, eps=m.eps, momentum=m.momentum,
                     **_options(m, {"center": True, "scale": True, "axis": 1}))
    if kind is L.KerasLayerNorm:
        return _call("reglab.KerasLayerNorm", m.normalized_shape[0], eps=m.eps,
                     **_options(m, {"center": True, "scale": True, "axis": -1}))
    if kind in _PLAIN:
        return _call(f"nn.{kind.__name__}", **_options(m, _PLAIN_DEFAULTS.get(kind, {})))
    if kind is L.SequenceDropout:
        return _call("reglab.SequenceDropout", p=m.p)
    if kind in (L.GaussianNoise, L.InputNoise):
        return _call(f"reglab.{kind.__name__}", stddev=m.stddev)
    if kind is L.GaussianDropout:
        return _call("reglab.GaussianDropout", rate=m.rate)
    if kind is L.RNNOutput:
        return _call("reglab.RNNOutput", return_sequences=m.return_sequences)
    if kind is L.ChannelsFirst:
        return "reglab.ChannelsFirst()"
    if isinstance(m, A.RandomLayer) and kind.__module__ == A.__name__:
        return _augment_code(m)
    return _generic(m)


def _augment_code(m) -> str:
    """reglab's augmentation layers, DropPath and AlphaDropout keep their arguments as attributes of
    the same names: the call is their constructor's arguments, those that differ from the defaults."""
    args, kwargs = [], {}
    for name, param in list(inspect.signature(type(m).__init__).parameters.items())[1:]:
        value = getattr(m, name)
        if param.default is inspect.Parameter.empty:
            args.append(value)
        elif value != param.default:
            kwargs[name] = value
    return _call(f"reglab.{type(m).__name__}", *args, **kwargs)


def _generic(m: nn.Module) -> str:
    """A torch.nn module this module has no rule for, written from its repr when that repr is a call
    of literals (e.g. ``Hardtanh(min_val=-1.0, max_val=1.0)``)."""
    kind = type(m)
    if getattr(nn, kind.__name__, None) is not kind or list(m.children()):
        raise TypeError(f"{kind.__name__} cannot be written as code")
    text = repr(m)
    try:
        call = ast.parse(text, mode="eval").body
        ok = isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == kind.__name__
        for arg in [*call.args, *(k.value for k in call.keywords)] if ok else []:
            ast.literal_eval(arg)
    except (SyntaxError, ValueError):
        ok = False
    if not ok:
        raise TypeError(f"{kind.__name__} cannot be written as code ({text})")
    return "nn." + text


# ------------------------------------------------------------------------------ regularization

def _target(name: str) -> str:
    if name.isdigit():
        return f"model[{name}]"
    return f"model.get_submodule({name!r})"


def _attached_lines(model: nn.Module) -> list[str]:
    """``reglab.regularize(...)`` for everything attached to ``model`` (as diagnose.snippet writes it)."""
    from .. import diagnose

    return [line for line in diagnose.snippet(model).splitlines() if line.startswith("reglab.regularize(")]


_ROLES = ("kernel", "bias", "recurrent", "activity", "kernel_constraint", "bias_constraint", "recurrent_constraint")


def _rule_lines(rules: dict, convention: str) -> list[str]:
    """One ``reglab.regularize(...)`` per module of a factory model's rules, as the study attaches them."""
    lines = []
    for name, kwargs in rules.items():
        if not kwargs:
            continue
        parts = []
        for key in sorted(kwargs, key=lambda k: _ROLES.index(k) if k in _ROLES else len(_ROLES)):
            getter = C.get if key.endswith("_constraint") else R.get
            parts.append(f"{key}={_rule_value(kwargs[key], getter)}")
        if kwargs.get("activity") is not None and convention != "mean":
            parts.append(f"activity_convention={convention!r}")
        lines.append(f"reglab.regularize({_target(str(name))}, {', '.join(parts)})")
    return lines


def _rule_value(value, getter) -> str:
    """``reglab.L2(l2=0.01)`` for ``"l2(0.01)"``; the value as given when it has no such form."""
    import reglab

    try:
        rule = getter(value)
    except (ValueError, TypeError):
        rule = None
    kind = type(rule)
    if rule is not None and getattr(reglab, kind.__name__, None) is kind:
        return f"reglab.{rule!r}"
    return _literal(value)


# ------------------------------------------------------------------------------------ factory

def _factory_lines(ref: str | None, args: dict | None = None) -> list[str]:
    call = ", ".join(f"{k}={v!r}" for k, v in (args or {}).items())
    if not ref:
        return ["# the study's model.factory function (not known here) builds the model:",
                f"model = ...  # e.g. from my_models import build; model = build({call})"]
    module, _, fn = ref.partition(":")
    alias = fn if fn not in _TAKEN and not keyword.iskeyword(fn) else "build_model"
    imported = fn if alias == fn else f"{fn} as {alias}"
    return [f"from {module} import {imported}  # the study's model.factory, importable from the study file's folder",
            "", f"model = {alias}({call})"]


# ----------------------------------------------------------------------------------- training

_FIT_KEYS = ("batch_size", "optimizer", "lr", "weight_decay", "momentum", "label_smoothing", "clipnorm", "clipvalue",
             "global_clipnorm")
_SCHEDULES = {"exponential": "reglab.ExponentialDecay", "step": "reglab.StepDecay", "cosine": "reglab.CosineDecay",
              "plateau": "reglab.ReduceLROnPlateau"}


def _fit_lines(training: dict, task: str | None, seed: int, weighted: bool = False) -> list[str]:
    """``reglab.fit(...)`` with the arguments the study's runner gives train_population (study.train.execute)."""
    args = [f"epochs={_literal(training.get('epochs', FIT_DEFAULT_EPOCHS))}"]
    if weighted:
        args.append("sample_weight=w_train")
    args += [f"{key}={_literal(training[key])}" for key in _FIT_KEYS if training.get(key) is not None]
    cw = training.get("class_weight")
    if cw is not None:
        args.append("class_weight=" + (_literal(cw) if isinstance(cw, str) else
                                        "{" + ", ".join(f"{int(k)}: {_literal(v)}" for k, v in cw.items()) + "}"))
    if training.get("schedule"):
        kwargs = dict(training["schedule"])
        args.append("schedule=" + _call(_SCHEDULES[kwargs.pop("kind")], **kwargs))
    for key, kind in (("mixup", "reglab.Mixup"), ("ema", "reglab.EMA"), ("swa", "reglab.SWA")):
        if training.get(key) is not None:
            args.append(f"{key}=" + _call(kind, **training[key]))
    if task is not None:
        args.append(f"task={task!r}")
    # a study re-initialises every member from its seed (Keras's initialisers unless it says "torch")
    args.append(f"preset={_literal(training.get('preset', 'keras'))}")
    es = training.get("early_stopping")
    if es:
        args.append("callbacks=[" + _call("reglab.EarlyStopping", **es) + "]")
    args.append(f"seed={int(seed)}")
    return ["history = reglab.fit(", "    model, train, validation,"] + _wrap(args, "    ") + [")"]


def _wrap(args: list[str], pad: str, width: int = 100) -> list[str]:
    lines, line = [], ""
    for arg in args:
        piece = arg + ","
        if line and len(pad) + len(line) + 1 + len(piece) > width:
            lines.append(pad + line)
            line = piece
        else:
            line = f"{line} {piece}" if line else piece
    if line:
        lines.append(pad + line)
    return lines


# -------------------------------------------------------------------------------------- text

def _table_text(table: dict) -> str:
    return ", ".join(f"{k} = {_toml(v)}" for k, v in table.items())


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + _table_text(value) + " }"
    return repr(value)


def _one_line(text: str) -> str:
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
