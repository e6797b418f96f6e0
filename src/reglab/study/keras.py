"""Keras-style layer lines → an ``nn.Sequential`` with reglab regularization attached.

Every layer line of the seeds parses as written, e.g.
``"Dense(500, input_dim=2, activation='relu', kernel_regularizer=l2(0.001))"``. Lines are read
with :mod:`reglab._parse` (no ``eval``). Tensors keep PyTorch's channels-first layout: image data is
(N, C, H, W) and sequence data (N, steps, features) as Keras has it; a Conv1D transposes to
channels-first itself (N, C, steps), and a recurrent layer after it transposes back. The model
outputs logits: a final ``sigmoid``/``softmax`` activation is folded into the loss.

Keras layers whose PyTorch counterparts have other defaults or another layout, as translated here:

- ``BatchNormalization(axis=-1, momentum=0.99, epsilon=0.001, center=True, scale=True)`` →
  :class:`reglab.KerasBatchNorm`: ``eps = epsilon`` (1e-3, not PyTorch's 1e-5), PyTorch's
  ``momentum = 1 - momentum`` (0.99 → 0.01, not PyTorch's 0.1), the moving variance updated with
  the batch's biased variance as Keras does (PyTorch's BatchNorm uses the unbiased one), beta
  (``bias``) and gamma (``weight``) dropped separately by ``center``/``scale``. Keras normalises
  its last axis, the features: here the last dim of flat (N, F) data and of (N, steps, features)
  sequences (statistics over the batch and the steps), and dim 1 of images (N, C, H, W) (the
  channels, BatchNorm2d's dim) and of Conv1D outputs (N, C, steps). ``beta_regularizer``/
  ``gamma_regularizer`` (and the constraints) go on ``bias``/``weight``.
- ``LayerNormalization(axis=-1, epsilon=0.001, center=True, scale=True)`` →
  ``nn.LayerNorm(features, eps=1e-3, bias=center)`` over the last dim of flat data and sequences;
  on images and Conv1D outputs, where Keras's last axis is our dim 1 (the channels), and when
  ``scale=False`` → :class:`reglab.KerasLayerNorm` (``axis=1`` normalises each position's channels).
- ``Embedding(input_dim, output_dim)`` → ``nn.Embedding(input_dim, output_dim)``, first layer only
  (it takes integer token ids, samples of shape (steps,)); its table has Keras's layout
  (input_dim, output_dim), so ``embeddings_regularizer`` is Keras's on the whole table and an
  ``embeddings_constraint``'s Keras ``axis`` (default 0: each embedding dimension's column over
  the vocabulary) is PyTorch's ``dim``. Keras's uniform(-0.05, 0.05) initialisation is the keras
  preset's. ``mask_zero=True`` is refused.
- ``SpatialDropout1D(rate)`` on (N, steps, features) → :class:`reglab.SequenceDropout` (one mask
  per sample and feature, shared by every step, Keras's noise shape (N, 1, features)); after a
  Conv1D (N, C, steps) → ``nn.Dropout1d`` (mask (N, C, 1)). ``SpatialDropout2D(rate)`` on images
  (N, C, H, W) → ``nn.Dropout2d`` (mask (N, C, 1, 1): whole channels, Keras's (N, 1, 1, C)).
- ``RandomFlip``, ``RandomTranslation``, ``RandomRotation``, ``RandomZoom``, ``RandomCrop`` with
  Keras's arguments and defaults (factors as fractions, ``fill_mode="reflect"``,
  ``interpolation="bilinear"``, ``fill_value=0.0``) → :mod:`reglab.augment`'s layers of the same
  names, on images (N, C, H, W); active in training only, each sample drawing its own parameters
  from the run's stream. ``AlphaDropout(rate)`` → :class:`reglab.AlphaDropout`. A ``seed`` (and
  AlphaDropout's ``noise_shape``) is refused: every random layer draws from the run's seed.

>>> model = build(["Dense(8, input_dim=2, activation='relu', kernel_regularizer=l2(0.001))",
...                "Dense(1, activation='sigmoid')"], input_shape=(2,))
>>> model
Sequential(
  (0): Linear(in_features=2, out_features=8, bias=True)
  (1): ReLU()
  (2): Linear(in_features=8, out_features=1, bias=True)
)
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from .. import constraints as C
from .. import penalties as R
from .._parse import Call, ParseError, parse_call
from ..attach import registry, regularize
from ..augment import AlphaDropout, RandomCrop, RandomFlip, RandomRotation, RandomTranslation, RandomZoom
from ..layers import (ChannelsFirst, GaussianDropout, GaussianNoise, KerasBatchNorm, KerasLayerNorm, RNNOutput,
                      SequenceDropout)


class ModelError(ValueError):
    """A layer line or model description that cannot be built (a one-line message)."""

    def __init__(self, message: str = ""):
        text = str(message)
        super().__init__(text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text))


ACTIVATIONS = {
    "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "elu": nn.ELU, "selu": nn.SELU,
    "softplus": nn.Softplus, "softsign": nn.Softsign, "swish": nn.SiLU, "silu": nn.SiLU, "gelu": nn.GELU,
    "hard_sigmoid": nn.Hardsigmoid, "leaky_relu": nn.LeakyReLU, "relu6": nn.ReLU6, "softmax": None, "linear": None,
}
_REG_ARGS = ("kernel_regularizer", "bias_regularizer", "activity_regularizer", "recurrent_regularizer")
_CON_ARGS = ("kernel_constraint", "bias_constraint", "recurrent_constraint")
# Regularizers and constraints of the normalisation layers' beta/gamma and of an Embedding's table.
_NAMED_REGS = ("beta_regularizer", "gamma_regularizer", "embeddings_regularizer")
_NAMED_CONS = ("beta_constraint", "gamma_constraint", "embeddings_constraint")
_NORM_RULES = {"beta_regularizer", "gamma_regularizer", "beta_constraint", "gamma_constraint"}
_COMMON = {"name", "input_dim", "input_shape", "kernel_initializer", "bias_initializer", "recurrent_initializer",
           "activity_regularizer"}
_OWN_ACTIVITY = {"Dense", "Conv1D", "Conv2D", "LSTM", "GRU", "SimpleRNN"}
_ALLOWED = {
    "Dense": {"units", "activation", "use_bias", *_REG_ARGS[:3], *_CON_ARGS[:2]},
    "Conv1D": {"filters", "kernel_size", "strides", "padding", "activation", "use_bias", "dilation_rate",
               *_REG_ARGS[:3], *_CON_ARGS[:2]},
    "Conv2D": {"filters", "kernel_size", "strides", "padding", "activation", "use_bias", "dilation_rate",
               *_REG_ARGS[:3], *_CON_ARGS[:2]},
    "LSTM": {"units", "return_sequences", "dropout", "use_bias", *_REG_ARGS, *_CON_ARGS},
    "GRU": {"units", "return_sequences", "dropout", "use_bias", *_REG_ARGS, *_CON_ARGS, "reset_after"},
    "SimpleRNN": {"units", "return_sequences", "dropout", "use_bias", "activation", *_REG_ARGS, *_CON_ARGS},
    "MaxPooling1D": {"pool_size", "strides", "padding"}, "MaxPooling2D": {"pool_size", "strides", "padding"},
    "AveragePooling1D": {"pool_size", "strides", "padding"}, "AveragePooling2D": {"pool_size", "strides", "padding"},
    "Flatten": set(), "Dropout": {"rate"}, "GaussianNoise": {"stddev"}, "GaussianDropout": {"rate"},
    "Activation": {"activation"}, "ActivityRegularization": {"l1", "l2"},
    "BatchNormalization": {"axis", "momentum", "epsilon", "center", "scale", *_NORM_RULES},
    "LayerNormalization": {"axis", "epsilon", "center", "scale", *_NORM_RULES},
    "Embedding": {"input_dim", "output_dim", "embeddings_regularizer", "embeddings_constraint", "mask_zero",
                  "input_length"},
    "SpatialDropout1D": {"rate"}, "SpatialDropout2D": {"rate"},
    "RandomFlip": {"mode", "seed"}, "RandomCrop": {"height", "width", "seed"},
    "RandomTranslation": {"height_factor", "width_factor", "fill_mode", "interpolation", "seed", "fill_value"},
    "RandomRotation": {"factor", "fill_mode", "interpolation", "seed", "fill_value"},
    "RandomZoom": {"height_factor", "width_factor", "fill_mode", "interpolation", "seed", "fill_value"},
    "AlphaDropout": {"rate", "noise_shape", "seed"},
}
# Keras's augmentation layers: their classes here and the arguments a line must give.
_AUGMENT = {"RandomFlip": (RandomFlip, ()), "RandomTranslation": (RandomTranslation, ("height_factor", "width_factor")),
            "RandomRotation": (RandomRotation, ("factor",)), "RandomZoom": (RandomZoom, ("height_factor",)),
            "RandomCrop": (RandomCrop, ("height", "width"))}
_POSITIONAL = {"Dense": ["units"], "Conv1D": ["filters", "kernel_size"], "Conv2D": ["filters", "kernel_size"],
               "LSTM": ["units"], "GRU": ["units"], "SimpleRNN": ["units"], "MaxPooling1D": ["pool_size"],
               "MaxPooling2D": ["pool_size"], "AveragePooling1D": ["pool_size"], "AveragePooling2D": ["pool_size"],
               "Dropout": ["rate"], "GaussianNoise": ["stddev"], "GaussianDropout": ["rate"], "Activation": ["activation"],
               "BatchNormalization": ["axis", "momentum", "epsilon", "center", "scale"],
               "LayerNormalization": ["axis", "epsilon", "center", "scale"], "Embedding": ["input_dim", "output_dim"],
               "SpatialDropout1D": ["rate"], "SpatialDropout2D": ["rate"], "RandomFlip": ["mode", "seed"],
               "RandomTranslation": ["height_factor", "width_factor", "fill_mode", "interpolation", "seed", "fill_value"],
               "RandomRotation": ["factor", "fill_mode", "interpolation", "seed", "fill_value"],
               "RandomZoom": ["height_factor", "width_factor", "fill_mode", "interpolation", "seed", "fill_value"],
               "RandomCrop": ["height", "width", "seed"], "AlphaDropout": ["rate", "noise_shape", "seed"]}
_ALIASES = {"Convolution1D": "Conv1D", "Convolution2D": "Conv2D", "MaxPool1D": "MaxPooling1D",
            "MaxPool2D": "MaxPooling2D", "AvgPool1D": "AveragePooling1D", "AvgPool2D": "AveragePooling2D"}

_TYPOGRAPHIC_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def parse_line(line: str) -> tuple[str, dict]:
    """``"Dense(500, activation='relu')"`` → ``("Dense", {"units": 500, "activation": "relu"})``."""
    if isinstance(line, str):
        line = line.translate(_TYPOGRAPHIC_QUOTES)   # lines copied from a web page: ‘relu’ is 'relu'
    try:
        call = parse_call(line, "layer")
    except ParseError as exc:
        raise ModelError(str(exc)) from None
    kind = _ALIASES.get(call.name, call.name)
    if kind not in _ALLOWED:
        close = difflib.get_close_matches(kind, list(_ALLOWED), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known layers: {', '.join(sorted(_ALLOWED))}"
        raise ModelError(f"Unknown layer {call.name!r} in {line!r}{hint}")
    names = _POSITIONAL.get(kind, [])
    if len(call.args) > len(names):
        raise ModelError(f"{line!r}: {kind} takes at most {len(names)} positional argument(s) ({', '.join(names) or 'none'}).")
    args = dict(zip(names, call.args))
    for key, value in call.kwargs.items():
        if key in args:
            raise ModelError(f"{line!r}: {key!r} is given twice.")
        args[key] = value
    allowed = _ALLOWED[kind] | _COMMON
    for key in args:
        if key not in allowed:
            takers = [k for k in _ALLOWED if key in _ALLOWED[k]]
            if key in (*_REG_ARGS, *_CON_ARGS, *_NAMED_REGS, *_NAMED_CONS) and takers:
                hint = f": it has no {key.split('_')[0]} weight; {', '.join(takers)} take{'' if len(takers) > 1 else 's'} {key}"
            else:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = (f"; did you mean {close[0]!r}?" if close else
                        f"; {kind} takes {', '.join(sorted(_ALLOWED[kind])) or 'no arguments'}")
            raise ModelError(f"{line!r}: {kind} has no argument {key!r}{hint}")
    # Names inside the line are checked here, so a study file with a typo is rejected when it is read.
    for key in (*_REG_ARGS, *_CON_ARGS, *_NAMED_REGS, *_NAMED_CONS):
        if key in args and key == "embeddings_constraint":
            _embedding_constraint(args[key], f"{line!r}: {key}")
        elif key in args:
            _rule(args[key], R.get if key in (*_REG_ARGS, *_NAMED_REGS) else C.get, f"{line!r}: {key}")
    if "activation" in args and kind != "SimpleRNN":
        _activation(args["activation"], f"{line!r}")
    if "input_dim" in args:
        _positive(args["input_dim"], f"{line!r}", "input_dim")
    if "input_shape" in args:
        shape = args["input_shape"]
        if not isinstance(shape, tuple) or not shape or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise ModelError(f"{line!r}: input_shape must be a tuple of positive ints such as (8, 8). Got {shape!r}.")
    if kind == "ActivityRegularization":
        _rule(Call("l1_l2", (), {k: args[k] for k in ("l1", "l2") if k in args}), R.get, f"{line!r}")
    if args.get("seed") is not None:
        raise ModelError(f"{line!r}: seed is not supported: every random layer draws from the run's seed (each "
                         f"population member from its own stream); remove seed={args['seed']!r}.")
    if args.get("noise_shape") is not None:
        raise ModelError(f"{line!r}: noise_shape is not supported: AlphaDropout draws one mask value per element; "
                         f"remove noise_shape={args['noise_shape']!r}.")
    return kind, args


def _rule(value, getter, where):
    if value is None:
        return None
    try:
        if isinstance(value, Call):
            return (R.from_call if getter is R.get else C.from_call)(value)
        return getter(value)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{where}: {exc}") from None


def _activation(name, where):
    if name is None:
        return None
    if isinstance(name, Call):
        name = name.name
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ModelError(f"{where}: unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}.")
    return name


def _pair(value, n, where, what):
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value,) * n
    if isinstance(value, tuple) and len(value) == n and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return value
    raise ModelError(f"{where}: {what} must be a positive int or a tuple of {n} positive ints. Got {value!r}.")


def build(lines: list[str], input_shape: tuple[int, ...], *, task: str | None = None,
          activity_convention: str = "mean", classes: int | None = None) -> nn.Sequential:
    """Build the model the layer ``lines`` describe for inputs of ``input_shape`` (without batch).

    With ``task`` the last layer is checked against it (and against ``classes``, the number of
    classes of a multiclass task, when given)."""
    if not isinstance(lines, (list, tuple)) or not lines:
        raise ModelError("The model needs a non-empty list of layer lines, e.g. [\"Dense(1, activation='sigmoid')\"].")
    modules: list[nn.Module] = []
    shape = tuple(input_shape)
    for index, line in enumerate(lines):
        if not isinstance(line, str):
            raise ModelError(f"Layer {index} must be a string such as \"Dense(10)\". Got {line!r}.")
        kind, args = parse_line(line)
        where = f"layer {index} {line!r}"
        last = index == len(lines) - 1
        for key in ("input_dim", "input_shape"):
            if key == "input_dim" and kind == "Embedding":
                continue   # an Embedding's input_dim is its vocabulary size
            if key in args and index == 0:
                given = (args[key],) if key == "input_dim" else tuple(args[key])
                if tuple(given) != shape[-len(given):] and tuple(given) != shape:
                    fit = f"input_dim={shape[-1]}" if key == "input_dim" else f"input_shape={shape}"
                    raise ModelError(f"{where}: {key}={args[key]!r} does not fit the data, whose samples have shape "
                                     f"{shape}; write {fit} or leave it out.")
        shape = _add(kind, args, shape, modules, where, last, task, activity_convention)
        if kind not in _OWN_ACTIVITY and args.get("activity_regularizer") is not None:
            # Any Keras layer takes an activity regularizer on its output.
            _attach(modules[-1], {}, {}, _rule(args["activity_regularizer"], R.get, where), where, activity_convention)
    if task is not None:
        _check_output(shape, task, f"layer {len(lines) - 1} {lines[-1]!r}", classes)
    return nn.Sequential(*modules)


def _check_output(shape, task, where, classes=None):
    """The last layer must give what the task's loss needs; found now rather than in the first training step."""
    if len(shape) != 1:
        raise ModelError(f"{where}: gives each sample an output of shape {shape}, but the model must end with one "
                         f"vector per sample; add Flatten() (or use return_sequences=False) before the last Dense.")
    if task in ("binary", "regression") and shape != (1,):
        end = "Dense(1, activation='sigmoid')" if task == "binary" else "Dense(1)"
        raise ModelError(f"{where}: gives {shape[0]} outputs per sample, but a {task} task needs 1; end with {end}.")
    if task == "multiclass" and (shape[0] < 2 or (classes is not None and shape[0] != classes)):
        wanted = f"{classes} (one per class)" if classes is not None else "one per class"
        raise ModelError(f"{where}: gives {shape[0]} outputs per sample, but this multiclass task needs {wanted}; "
                         f"end with Dense({classes or 'CLASSES'}, activation='softmax').")


def _add(kind, args, shape, modules, where, last, task, convention):
    regs = {k: _rule(args.get(k), R.get, where) for k in _REG_ARGS}
    cons = {k: _rule(args.get(k), C.get, where) for k in _CON_ARGS}
    activation = _activation(args.get("activation"), where) if kind not in ("LSTM", "GRU") else None
    bias = bool(args.get("use_bias", True))
    core = None
    if kind == "Dense":
        units = _positive(args.get("units"), where, "units")
        _fits(shape[-1] * units, where, "units")
        core = nn.Linear(shape[-1], units, bias=bias)
        shape = shape[:-1] + (units,)
    elif kind in ("Conv1D", "Conv2D"):
        n = 1 if kind == "Conv1D" else 2
        filters = _positive(args.get("filters"), where, "filters")
        ksize = _pair(args.get("kernel_size"), n, where, "kernel_size")
        strides = _pair(args.get("strides", 1), n, where, "strides")
        dilation = _pair(args.get("dilation_rate", 1), n, where, "dilation_rate")
        padding = args.get("padding", "valid")
        if padding not in ("valid", "same"):
            raise ModelError(f"{where}: padding must be 'valid' or 'same'. Got {padding!r}.")
        if padding == "same" and strides != (1,) * n:
            raise ModelError(f"{where}: padding='same' needs strides=1 in PyTorch.")
        if kind == "Conv1D":
            if len(shape) != 2:
                raise ModelError(f"{where}: Conv1D needs samples of shape (steps, features); these have shape {shape}.")
            if _layout(shape, modules) == "steps":   # after another Conv1D it is channels-first already
                modules.append(ChannelsFirst())
                shape = (shape[1], shape[0])
        elif len(shape) != 3:
            raise ModelError(f"{where}: Conv2D needs samples of shape (channels, height, width); these have shape {shape}.")
        _fits(shape[0] * filters * _prod(ksize), where, "filters or kernel_size")
        conv = nn.Conv1d if n == 1 else nn.Conv2d
        core = conv(shape[0], filters, ksize, stride=strides, padding=padding, dilation=dilation, bias=bias)
        shape = _probe(core, shape, where)
    elif kind in ("LSTM", "GRU", "SimpleRNN"):
        if len(shape) != 2:
            raise ModelError(f"{where}: {kind} needs samples of shape (steps, features); these have shape {shape}.")
        units = _positive(args.get("units"), where, "units")
        if _layout(shape, modules) == "channels":   # a Conv1D's (C, steps) output: back to (steps, C)
            modules.append(ChannelsFirst())
            shape = (shape[1], shape[0])
        _fits(4 * units * (shape[1] + units), where, "units")
        rate = _fraction(args.get("dropout", 0.0), where, "dropout")
        if rate:
            modules.append(SequenceDropout(rate))
        if kind == "SimpleRNN":
            act = args.get("activation", "tanh")
            if act not in ("tanh", "relu"):
                raise ModelError(f"{where}: SimpleRNN supports activation 'tanh' or 'relu'. Got {act!r}.")
            core = nn.RNN(shape[1], units, batch_first=True, nonlinearity=act, bias=bias)
        else:
            core = (nn.LSTM if kind == "LSTM" else nn.GRU)(shape[1], units, batch_first=True, bias=bias)
        seq = bool(args.get("return_sequences", False))
        _attach(core, regs, cons, None, where, convention)
        modules.append(core)
        out = RNNOutput(return_sequences=seq)
        modules.append(out)
        if regs["activity_regularizer"] is not None:
            _attach(out, {}, {}, regs["activity_regularizer"], where, convention)
        return (shape[0], units) if seq else (units,)
    elif kind in ("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D"):
        n = 1 if kind.endswith("1D") else 2
        size = _pair(args.get("pool_size", 2), n, where, "pool_size")
        strides = _pair(args.get("strides") or size, n, where, "strides")
        if args.get("padding", "valid") != "valid":
            raise ModelError(f"{where}: only padding='valid' pooling is supported.")
        cls = {("Max", 1): nn.MaxPool1d, ("Max", 2): nn.MaxPool2d, ("Ave", 1): nn.AvgPool1d, ("Ave", 2): nn.AvgPool2d}[(kind[:3], n)]
        if n == 2 and len(shape) != 3:
            raise ModelError(f"{where}: {kind} needs samples of shape (channels, height, width); these have shape {shape}.")
        if n == 1 and _layout(shape, modules) != "channels":
            if len(shape) != 2:
                raise ModelError(f"{where}: {kind} needs samples of shape (steps, features); these have shape {shape}.")
            modules.append(ChannelsFirst())
            shape = (shape[1], shape[0])
        core = cls(size, stride=strides)
        modules.append(core)
        return _probe(core, shape, where, add=False)
    elif kind == "Flatten":
        modules.append(nn.Flatten())
        size = 1
        for s in shape:
            size *= s
        return (size,)
    elif kind == "Dropout":
        modules.append(nn.Dropout(_fraction(args.get("rate"), where, "rate")))
        return shape
    elif kind == "GaussianNoise":
        modules.append(GaussianNoise(_nonneg(args.get("stddev"), where, "stddev")))
        return shape
    elif kind == "GaussianDropout":
        modules.append(GaussianDropout(_fraction(args.get("rate"), where, "rate")))
        return shape
    elif kind in ("BatchNormalization", "LayerNormalization"):
        return _normalization(kind, args, shape, modules, where, convention)
    elif kind == "Embedding":
        return _embedding(args, shape, modules, where, convention)
    elif kind == "SpatialDropout1D":
        rate = _fraction(args.get("rate"), where, "rate")
        layout = _layout(shape, modules)
        if layout not in ("steps", "channels"):
            raise ModelError(f"{where}: SpatialDropout1D needs samples of shape (steps, features); these have shape "
                             f"{shape}; use Dropout, or SpatialDropout2D for images.")
        # Keras drops whole features with one mask per sample shared by every step (noise shape
        # (N, 1, features)): SequenceDropout on (N, steps, features), nn.Dropout1d on a Conv1D's (N, C, steps).
        modules.append(SequenceDropout(rate) if layout == "steps" else nn.Dropout1d(rate))
        return shape
    elif kind == "SpatialDropout2D":
        rate = _fraction(args.get("rate"), where, "rate")
        if len(shape) != 3:
            raise ModelError(f"{where}: SpatialDropout2D needs samples of shape (channels, height, width); these have "
                             f"shape {shape}; use Dropout, or SpatialDropout1D for sequences.")
        # Keras's channels-last mask (N, 1, 1, C) is nn.Dropout2d's (N, C, 1, 1) on (N, C, H, W).
        modules.append(nn.Dropout2d(rate))
        return shape
    elif kind in _AUGMENT:
        cls, required = _AUGMENT[kind]
        if len(shape) != 3:
            raise ModelError(f"{where}: {kind} needs images, samples of shape (channels, height, width); these have "
                             f"shape {shape}.")
        missing = [name for name in required if name not in args]
        if missing:
            raise ModelError(f"{where}: {kind} needs {' and '.join(missing)} (Keras has no default).")
        options = {k: v for k, v in args.items() if k in _ALLOWED[kind] and k != "seed"}
        try:
            module = cls(**options)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{where}: {exc}") from None
        if kind == "RandomCrop" and shape[0] * module.height * module.width > MAX_LAYER_WEIGHTS:
            raise ModelError(f"{where}: would give each sample {shape[0] * module.height * module.width:,} values (more "
                             f"than {MAX_LAYER_WEIGHTS:,}); lower height or width.")
        modules.append(module)
        return (shape[0], module.height, module.width) if kind == "RandomCrop" else shape
    elif kind == "AlphaDropout":
        modules.append(AlphaDropout(_fraction(args.get("rate"), where, "rate")))
        return shape
    elif kind == "Activation":
        act = _activation(args.get("activation"), where)
        module = _activation_module(act, last, task)
        modules.append(module)
        return shape
    elif kind == "ActivityRegularization":
        module = nn.Identity()
        modules.append(module)
        penalty = _rule(Call("l1_l2", (), {"l1": args.get("l1", 0.0), "l2": args.get("l2", 0.0)}), R.get, where)
        _attach(module, {}, {}, penalty, where, convention)
        return shape
    modules.append(core)
    act_module = _activation_module(activation, last, task) if activation else None
    if act_module is not None and not isinstance(act_module, nn.Identity):
        modules.append(act_module)
    # Keras applies a layer's activity regularizer to its output, i.e. after its activation.
    activity_target = act_module if act_module is not None and not isinstance(act_module, nn.Identity) else core
    _attach(core, regs, cons, None, where, convention)
    if regs["activity_regularizer"] is not None:
        _attach(activity_target, {}, {}, regs["activity_regularizer"], where, convention)
    return shape


def _normalization(kind, args, shape, modules, where, convention):
    """BatchNormalization / LayerNormalization with Keras's defaults (see the module's docstring)."""
    if "axis" in args and (isinstance(args["axis"], bool) or args["axis"] != -1):
        raise ModelError(f"{where}: only axis=-1 (Keras's default: the features, or an image's channels) is "
                         f"supported; remove axis={args['axis']!r}.")
    eps = _positive_number(args.get("epsilon", 1e-3), where, "epsilon")
    center, scale = _flag(args.get("center", True), where, "center"), _flag(args.get("scale", True), where, "scale")
    rules = {}
    for name, param, on in (("beta", "bias", center), ("gamma", "weight", scale)):
        for suffix, getter in (("regularizer", R.get), ("constraint", C.get)):
            value = _rule(args.get(f"{name}_{suffix}"), getter, where)
            if value is not None and not on:
                flag = "center" if name == "beta" else "scale"
                raise ModelError(f"{where}: {name}_{suffix} needs {flag}=True ({flag}=False drops {name}); "
                                 f"remove one of them.")
            rules.setdefault(suffix, {})[param] = value
    layout = _layout(shape, modules)
    if layout == "other":
        raise ModelError(f"{where}: {kind} needs samples of shape (features,), (steps, features) or (channels, "
                         f"height, width); these have shape {shape}.")
    # Keras normalises its last axis (the features; an image's channels): here dim 1 of images
    # (N, C, H, W) and Conv1D outputs (N, C, steps), the last dim of flat (N, F) and (N, steps, features).
    dim = 1 if layout in ("image", "channels") else -1
    features = shape[-1] if dim == -1 else shape[0]   # shape has no batch dim: PyTorch dim 1 is shape[0]
    if kind == "BatchNormalization":
        momentum = _unit(args.get("momentum", 0.99), where, "momentum")
        # PyTorch's momentum weighs the new batch: 1 - Keras's (0.99 -> 0.01, written without the
        # float noise of 1 - 0.99); eps = Keras's epsilon (1e-3, not PyTorch's 1e-5).
        module = KerasBatchNorm(features, eps=eps, momentum=float(f"{1.0 - momentum:.12g}"), center=center,
                                scale=scale, axis=dim)
    elif dim == -1 and scale:
        module = nn.LayerNorm(features, eps=eps, bias=center)     # eps = Keras's epsilon (1e-3, not 1e-5)
    else:   # channels-first (Keras's last axis is our dim 1), or gamma dropped while beta stays
        module = KerasLayerNorm(features, eps=eps, center=center, scale=scale, axis=dim)
    _attach_named(module, rules["regularizer"], rules["constraint"], where, convention)
    modules.append(module)
    return shape


def _embedding(args, shape, modules, where, convention):
    """Embedding(input_dim, output_dim): nn.Embedding, the first layer, on token ids of shape (steps,)."""
    if modules:
        raise ModelError(f"{where}: Embedding must be the first layer: it takes integer token ids, and the layers "
                         f"before it give floats; move it first.")
    vocab = _positive(args.get("input_dim"), where, "input_dim")
    dim = _positive(args.get("output_dim"), where, "output_dim")
    mask = args.get("mask_zero", False)
    if not isinstance(mask, bool):
        raise ModelError(f"{where}: mask_zero must be True or False. Got {mask!r}.")
    if mask:
        raise ModelError(f"{where}: mask_zero=True is not supported (PyTorch layers take no Keras mask); remove it, "
                         f"and token id 0 is embedded like any other.")
    if len(shape) != 1:
        raise ModelError(f"{where}: Embedding needs samples of token ids of shape (steps,); these have shape {shape}.")
    if "input_length" in args and _positive(args["input_length"], where, "input_length") != shape[0]:
        raise ModelError(f"{where}: input_length={args['input_length']} does not fit the data, whose samples have "
                         f"{shape[0]} steps; write input_length={shape[0]} or leave it out.")
    _fits(vocab * dim, where, "input_dim or output_dim")
    module = nn.Embedding(vocab, dim)
    _attach_named(module, {"weight": _rule(args.get("embeddings_regularizer"), R.get, where)},
                  {"weight": _embedding_constraint(args.get("embeddings_constraint"), where)}, where, convention)
    modules.append(module)
    return (shape[0], dim)


def _embedding_constraint(value, where):
    """An embeddings_constraint with Keras's axis as PyTorch's dim.

    nn.Embedding's table is (input_dim, output_dim), Keras's own layout, so Keras's ``axis`` is the
    dim to reduce over as it stands: the default axis=0 takes each embedding dimension's norm over
    the vocabulary (reglab's default for a 2-D weight, each row, would be Keras's axis=1)."""
    if value is None:
        return None
    axis = 0
    if isinstance(value, Call):
        plain = _rule(value.name, C.get, where)
        args, kwargs = list(value.args), dict(value.kwargs)
        if "axis" in kwargs:
            axis = kwargs.pop("axis")
        elif len(args) > len(type(plain).bounds):
            axis = args.pop()
        if isinstance(axis, list):
            axis = tuple(axis)
        value = Call(value.name, tuple(args), kwargs)
    constraint = _rule(value, C.get, where)
    if isinstance(axis, bool) or not (isinstance(axis, int) or (
            isinstance(axis, tuple) and axis and all(isinstance(a, int) and not isinstance(a, bool) for a in axis))):
        raise ModelError(f"{where}: a constraint's axis must be an int or a tuple of ints. Got {axis!r}.")
    if any(not -2 <= a <= 1 for a in ((axis,) if isinstance(axis, int) else axis)):
        raise ModelError(f"{where}: axis={axis!r} does not fit the 2-D embedding table; use axis=0 (each embedding "
                         f"dimension, Keras's default) or axis=1 (each token's vector).")
    if hasattr(constraint, "dim"):
        constraint.dim = (axis,) if isinstance(axis, int) else axis
    return constraint


def _flag(value, where, what):
    if not isinstance(value, bool):
        raise ModelError(f"{where}: {what} must be True or False. Got {value!r}.")
    return value


def _unit(value, where, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ModelError(f"{where}: {what} must be a number in [0, 1]. Got {value!r}.")
    return float(value)


def _positive_number(value, where, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ModelError(f"{where}: {what} must be a finite number > 0. Got {value!r}.")
    return float(value)


def _layout(shape, modules):
    """How the samples of ``shape`` are laid out after ``modules``: "flat" (features,), "image"
    (C, H, W), "steps" (steps, features), Keras's sequence layout, or "channels" (C, steps): a
    Conv1D's output, until a recurrent layer transposes it back."""
    if len(shape) != 2:
        return {1: "flat", 3: "image"}.get(len(shape), "other")
    for m in reversed(modules):
        if isinstance(m, ChannelsFirst):
            return "channels"
        if isinstance(m, (RNNOutput, nn.Embedding)):
            return "steps"
    return "steps"


def _activation_module(name, last, task):
    if name in (None, "linear"):
        return nn.Identity()
    if last and (name, task) in (("sigmoid", None), ("sigmoid", "binary"), ("softmax", None), ("softmax", "multiclass")):
        return nn.Identity()    # folded into the loss: the model outputs logits
    if name == "softmax":
        return nn.Softmax(dim=-1)
    return ACTIVATIONS[name]()


def _attach(module, regs, cons, activity, where, convention):
    try:
        regularize(module, kernel=regs.get("kernel_regularizer"), bias=regs.get("bias_regularizer"),
                   recurrent=regs.get("recurrent_regularizer"), activity=activity,
                   kernel_constraint=cons.get("kernel_constraint"), bias_constraint=cons.get("bias_constraint"),
                   recurrent_constraint=cons.get("recurrent_constraint"), activity_convention=convention)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{where}: {exc}") from None
    _try_rules(module, where)


def _attach_named(module, penalties, constraints, where, convention):
    """Penalties and constraints by parameter name (``{"weight": ..., "bias": ...}``; None: nothing)."""
    try:
        regularize(module, penalties={k: v for k, v in penalties.items() if v is not None},
                   constraints={k: v for k, v in constraints.items() if v is not None}, activity_convention=convention)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{where}: {exc}") from None
    _try_rules(module, where)


def _try_rules(module, where):
    reg = registry(module)
    if reg is None:
        return
    try:   # each penalty and constraint once on its weight: one that cannot work on it is refused now
        with torch.no_grad():
            for name, penalty in reg.penalties.items():
                penalty(module.get_parameter(name))
            for name, constraint in reg.constraints.items():
                constraint(module.get_parameter(name))
    except (ValueError, TypeError, RuntimeError, IndexError) as exc:
        raise ModelError(f"{where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _probe(core, shape, where, add=True):
    try:
        with torch.no_grad():
            out = core(torch.zeros((1,) + tuple(shape)))
    except (RuntimeError, IndexError, ValueError) as exc:
        raise ModelError(f"{where}: does not fit inputs of shape {shape}: {str(exc).splitlines()[0].rstrip('.')}; "
                         f"use a smaller kernel_size/pool_size or strides, or padding='same'.") from None
    return tuple(out.shape[1:])


MAX_LAYER_WEIGHTS = 100_000_000   # 400 MB of float32 per member: far beyond any model a study trains as a population


def _prod(values):
    out = 1
    for v in values:
        out *= v
    return out


def _fits(weights, where, what):
    if weights > MAX_LAYER_WEIGHTS:
        raise ModelError(f"{where}: this layer would hold {weights:,} weights (more than {MAX_LAYER_WEIGHTS:,} per "
                         f"model); lower {what}.")


def _positive(value, where, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{where}: {what} must be a positive int. Got {value!r}.")
    return value


def _fraction(value, where, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ModelError(f"{where}: {what} must be a number in [0, 1). Got {value!r}.")
    return float(value)


def _nonneg(value, where, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise ModelError(f"{where}: {what} must be a finite number >= 0. Got {value!r}.")
    return float(value)
