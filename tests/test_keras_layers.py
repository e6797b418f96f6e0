"""Keras layer lines with Keras's defaults translated to PyTorch: BatchNormalization,
LayerNormalization, Embedding, SpatialDropout1D/2D (reglab.study.keras).

For each layer: the module a line builds and its settings, its numbers against Keras's formulas
written in NumPy on hand-made inputs (Keras 3's BatchNormalization.call: ``ops.moments`` gives the
batch's mean and *biased* variance, which normalise the batch and update
``moving = moving * momentum + batch * (1 - momentum)``), the population engine's members equal to
their standalone fits (float64), end-to-end studies, and every error message.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import reglab
from reglab.attach import registry
from reglab.layers import ChannelsFirst, KerasBatchNorm, KerasLayerNorm, RNNOutput, SequenceDropout
from reglab.population.functional import noise_shape, site_kind
from reglab.study import ModelError, StudyError, build, from_dict, load, prepare, run
from reglab.study import spec as S
from reglab.study.snippet import variant_snippet

from test_any_model import check_family, float64  # noqa: F401 - float64 is a fixture
from test_snippet import assert_same_model, execute

pytestmark = pytest.mark.usefixtures("one_thread")


def types(model):
    return [type(m) for m in model]


# ------------------------------------------------------------------- NumPy: Keras's formulas

def keras_batchnorm(x, gamma, beta, moving_mean, moving_var, axes, training, momentum=0.99, epsilon=1e-3):
    """Keras 3 BatchNormalization.call on channels-last ``x`` reduced over ``axes``: (y, mean', var')."""
    if training:
        mean, var = x.mean(axes), x.var(axes)                      # ops.moments: the biased variance
        moving_mean = moving_mean * momentum + mean * (1.0 - momentum)
        moving_var = moving_var * momentum + var * (1.0 - momentum)
    else:
        mean, var = moving_mean, moving_var
    y = (x - mean) / np.sqrt(var + epsilon)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y, moving_mean, moving_var


def keras_layernorm(x, gamma, beta, epsilon=1e-3):
    """Keras 3 LayerNormalization(axis=-1) on channels-last ``x``."""
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + epsilon)
    return (y * gamma if gamma is not None else y) + (beta if beta is not None else 0.0)


def t(a):
    return torch.as_tensor(a, dtype=torch.float64)


def set_affine(module, gen):
    with torch.no_grad():
        if module.weight is not None:
            module.weight.copy_(t(gen.normal(size=module.weight.shape) + 1))
        if module.bias is not None:
            module.bias.copy_(t(gen.normal(size=module.bias.shape)))
    return (None if module.weight is None else module.weight.detach().numpy(),
            None if module.bias is None else module.bias.detach().numpy())


# ------------------------------------------------------------------------- BatchNormalization

@pytest.mark.parametrize("shape, lines, axis", [
    ((5,), ["Dense(4)", "BatchNormalization()"], -1),                                # (N, F): the features
    ((6, 3), ["BatchNormalization()"], -1),                                         # (N, steps, F): the last dim
    ((1, 8, 8), ["Conv2D(4, 3)", "BatchNormalization()"], 1),                        # (N, C, H, W): the channels
    ((6, 3), ["Conv1D(4, 2)", "BatchNormalization()"], 1),                            # a Conv1D's (N, C, steps)
])
def test_batchnormalization_builds_with_keras_defaults(shape, lines, axis):
    model = build(lines, shape)
    bn = model[-1]
    assert type(bn) is KerasBatchNorm
    features = 4 if len(lines) > 1 else 3
    assert (bn.num_features, bn.eps, bn.momentum, bn.axis) == (features, 1e-3, 0.01, axis)
    assert bn.center and bn.scale and bn.track_running_stats
    assert {n for n, _ in bn.named_parameters()} == {"weight", "bias"}
    assert torch.equal(bn.running_mean, torch.zeros(features)) and torch.equal(bn.running_var, torch.ones(features))


def test_batchnormalization_arguments_translate():
    bn = build(["BatchNormalization(momentum=0.9, epsilon=0.01)"], (3,))[0]
    assert (bn.momentum, bn.eps) == (0.1, 0.01)
    bn = build(["BatchNormalization(-1, 0.8, 1e-4, False, True)"], (3,))[0]                 # Keras's positional order
    assert (bn.momentum, bn.eps, bn.center, bn.scale) == (pytest.approx(0.2), 1e-4, False, True)
    assert [n for n, _ in bn.named_parameters()] == ["weight"] and bn.bias is None
    bn = build(["BatchNormalization(scale=False)"], (3,))[0]
    assert [n for n, _ in bn.named_parameters()] == ["bias"] and bn.weight is None
    bn = build(["BatchNormalization(center=False, scale=False)"], (3,))[0]
    assert list(bn.parameters()) == [] and not bn.affine
    bn = build(["BatchNormalization(beta_regularizer=l2(0.01), gamma_regularizer=l1(0.001), "
                "beta_constraint=max_norm(2), gamma_constraint=non_neg())"], (3,))[0]
    reg = registry(bn)
    assert reg.penalties == {"bias": reglab.L2(0.01), "weight": reglab.L1(0.001)}
    assert reg.constraints == {"bias": reglab.MaxNorm(2), "weight": reglab.NonNeg()}
    bn = build(["BatchNormalization(activity_regularizer=l2(0.1))"], (3,))[0]
    assert registry(bn).activity == reglab.L2(0.1)


def test_batchnormalization_matches_keras_formulas_and_updates_with_the_biased_variance():
    gen = np.random.default_rng(0)
    bn = KerasBatchNorm(3, axis=-1).double()
    gamma, beta = set_affine(bn, gen)
    mm, mv = np.zeros(3), np.ones(3)
    for step in range(3):                                         # the recurrence, step by step
        x = gen.normal(size=(5, 3)) * [1.0, 3.0, 0.5] + [0.0, 2.0, -1.0]
        y = bn.train()(t(x))
        want, mm, mv = keras_batchnorm(x, gamma, beta, mm, mv, 0, training=True)
        np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(bn.running_mean.numpy(), mm, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(bn.running_var.numpy(), mv, rtol=1e-13, atol=1e-15)
    assert int(bn.num_batches_tracked) == 3
    x = gen.normal(size=(4, 3))
    np.testing.assert_allclose(bn.eval()(t(x)).detach().numpy(),
                               keras_batchnorm(x, gamma, beta, mm, mv, 0, training=False)[0], rtol=1e-12, atol=1e-12)
    # PyTorch's BatchNorm1d with the same momentum and eps moves its running variance by the unbiased one
    torch_bn = nn.BatchNorm1d(3, eps=1e-3, momentum=0.01).double()
    x = gen.normal(size=(5, 3))
    torch_bn(t(x))
    np.testing.assert_allclose(torch_bn.running_var.numpy(), 0.99 + 0.01 * x.var(0, ddof=1), rtol=1e-13)
    assert not np.allclose(torch_bn.running_var.numpy(), 0.99 + 0.01 * x.var(0))


@pytest.mark.parametrize("layout", ["sequence", "image", "conv1d-output"])
def test_batchnormalization_normalises_keras_last_axis_in_each_layout(layout):
    """Keras's channels-last statistics, per feature / channel, in this library's layouts."""
    gen = np.random.default_rng(1)
    if layout == "sequence":          # (N, steps, F), channels-last as in Keras
        x_keras = gen.normal(size=(4, 5, 3)) * [1.0, 2.0, 3.0]
        bn, to_torch = KerasBatchNorm(3, axis=-1).double(), (lambda a: a)
    elif layout == "image":           # Keras (N, H, W, C) is (N, C, H, W) here
        x_keras = gen.normal(size=(3, 4, 4, 2)) * [1.0, 5.0]
        bn, to_torch = KerasBatchNorm(2, axis=1).double(), (lambda a: a.transpose(0, 3, 1, 2))
    else:                             # Keras (N, steps, C) is a Conv1D's (N, C, steps) here
        x_keras = gen.normal(size=(4, 6, 3)) * [1.0, 2.0, 3.0]
        bn, to_torch = KerasBatchNorm(3, axis=1).double(), (lambda a: a.transpose(0, 2, 1))
    gamma, beta = set_affine(bn, gen)
    axes = tuple(range(x_keras.ndim - 1))
    want, mm, mv = keras_batchnorm(x_keras, gamma, beta, np.zeros_like(gamma), np.ones_like(gamma), axes, True)
    y = bn.train()(t(to_torch(x_keras)))
    np.testing.assert_allclose(y.detach().numpy(), to_torch(want), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean.numpy(), mm, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(bn.running_var.numpy(), mv, rtol=1e-13, atol=1e-15)
    want = keras_batchnorm(x_keras, gamma, beta, mm, mv, axes, False)[0]
    np.testing.assert_allclose(bn.eval()(t(to_torch(x_keras))).detach().numpy(), to_torch(want), rtol=1e-12, atol=1e-12)


def test_batchnormalization_of_a_one_sample_batch_gives_beta_as_keras_does():
    """PyTorch's BatchNorm refuses a training batch of one sample; Keras normalises it (variance 0)."""
    bn = KerasBatchNorm(3).double()
    gamma, beta = set_affine(bn, np.random.default_rng(2))
    x = np.array([[1.0, -2.0, 5.0]])
    y = bn.train()(t(x))
    want, mm, mv = keras_batchnorm(x, gamma, beta, np.zeros(3), np.ones(3), 0, True)
    np.testing.assert_allclose(y.detach().numpy(), want, atol=1e-12)
    np.testing.assert_allclose(y.detach().numpy()[0], beta, atol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), mv)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        nn.BatchNorm1d(3).double()(t(x))


def test_keras_batchnorm_without_beta_or_gamma_and_its_errors():
    gen = np.random.default_rng(3)
    x = gen.normal(size=(6, 2))
    for center, scale in ((False, True), (True, False), (False, False)):
        bn = KerasBatchNorm(2, center=center, scale=scale).double()
        gamma, beta = set_affine(bn, gen)
        want = keras_batchnorm(x, gamma, beta, np.zeros(2), np.ones(2), 0, True)[0]
        np.testing.assert_allclose(bn(t(x)).detach().numpy(), want, rtol=1e-12, atol=1e-12)
        bn.reset_parameters()                 # the torch preset re-initialises through it
    with pytest.raises(ValueError, match=r"KerasBatchNorm\(2, axis=1\) needs inputs with 2 features in dim 1; got "
                                         r"an input of shape \(4, 3\)"):
        KerasBatchNorm(2)(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="'momentum' parameter of KerasBatchNorm must be a float in the range"):
        KerasBatchNorm(2, momentum=1.5)
    with pytest.raises(ValueError, match="'axis' parameter of KerasBatchNorm must be 1"):
        KerasBatchNorm(2, axis=2)


# ------------------------------------------------------------------------- LayerNormalization

def test_layernormalization_builds_with_keras_defaults():
    ln = build(["LayerNormalization()"], (5,))[0]
    assert type(ln) is nn.LayerNorm and ln.normalized_shape == (5,) and ln.eps == 1e-3
    assert ln.weight is not None and ln.bias is not None
    ln = build(["LayerNormalization()"], (6, 3))[0]                   # sequences: each step's features
    assert type(ln) is nn.LayerNorm and ln.normalized_shape == (3,)
    ln = build(["LayerNormalization(epsilon=1e-5, center=False)"], (5,))[0]
    assert type(ln) is nn.LayerNorm and ln.eps == 1e-5 and ln.bias is None and ln.weight is not None
    ln = build(["LayerNormalization(scale=False)"], (5,))[0]          # beta without gamma: no nn.LayerNorm option
    assert type(ln) is KerasLayerNorm and ln.weight is None and ln.bias is not None and ln.axis == -1
    for shape, lines, channels in (((1, 8, 8), ["Conv2D(4, 3)", "LayerNormalization()"], 4),
                                   ((6, 3), ["Conv1D(5, 2)", "LayerNormalization()"], 5)):
        ln = build(lines, shape)[-1]                                 # channels-first: Keras's last axis is dim 1
        assert type(ln) is KerasLayerNorm and ln.normalized_shape == (channels,) and (ln.axis, ln.eps) == (1, 1e-3)
    ln = build(["LayerNormalization(beta_regularizer=l1(0.01), gamma_constraint=unit_norm())"], (5,))[0]
    assert registry(ln).penalties == {"bias": reglab.L1(0.01)} and registry(ln).constraints == {"weight": reglab.UnitNorm()}


@pytest.mark.parametrize("layout", ["flat", "sequence", "image", "conv1d-output"])
def test_layernormalization_matches_keras_formula(layout):
    gen = np.random.default_rng(4)
    if layout == "flat":
        x_keras, lines, shape, to_torch = gen.normal(size=(4, 5)) * 3, [], (5,), (lambda a: a)
    elif layout == "sequence":
        x_keras, lines, shape, to_torch = gen.normal(size=(4, 6, 3)), [], (6, 3), (lambda a: a)
    elif layout == "image":
        x_keras, lines, shape, to_torch = gen.normal(size=(2, 3, 3, 4)), [], (4, 3, 3), (lambda a: a.transpose(0, 3, 1, 2))
    else:
        x_keras, lines, shape, to_torch = gen.normal(size=(2, 6, 4)), [], (4, 6), (lambda a: a.transpose(0, 2, 1))
    if layout == "conv1d-output":    # a Conv1D's output is channels-first: as built after a Conv1D
        ln = KerasLayerNorm(4, axis=1).double()
        assert type(build(["Conv1D(4, 1)", "LayerNormalization()"], (6, 4))[-1]) is KerasLayerNorm
    else:
        ln = build(["LayerNormalization()"], shape)[0].double()
    gamma, beta = set_affine(ln, gen)
    want = keras_layernorm(x_keras, gamma, beta)
    np.testing.assert_allclose(ln(t(to_torch(x_keras))).detach().numpy(), to_torch(want), rtol=1e-12, atol=1e-12)
    for center, scale in ((False, True), (True, False), (False, False)):
        other = KerasLayerNorm(ln.normalized_shape[0], center=center, scale=scale,
                               axis=1 if layout in ("image", "conv1d-output") else -1).double()
        g, b = set_affine(other, gen)
        np.testing.assert_allclose(other(t(to_torch(x_keras))).detach().numpy(), to_torch(keras_layernorm(x_keras, g, b)),
                                   rtol=1e-12, atol=1e-12)
        other.reset_parameters()


# ----------------------------------------------------------------------------------- Embedding

def test_embedding_builds_and_looks_up_rows():
    model = build(["Embedding(20, 8, input_length=7)", "Flatten()", "Dense(1)"], (7,))
    emb = model[0]
    assert type(emb) is nn.Embedding and (emb.num_embeddings, emb.embedding_dim) == (20, 8)
    assert emb.padding_idx is None and emb.max_norm is None
    ids = torch.tensor([[0, 3, 19, 3, 1, 2, 5]])
    np.testing.assert_array_equal(emb(ids).detach().numpy(), emb.weight.detach().numpy()[ids.numpy()])
    assert model(ids).shape == (1, 1)
    assert types(build(["Embedding(input_dim=50, output_dim=4)", "LSTM(3)"], (7,))) == [nn.Embedding, nn.LSTM, RNNOutput]
    # Keras's uniform(-0.05, 0.05) initialisation is the keras preset's
    reglab.initialize(model, "keras", seed=0)
    w = emb.weight.detach()
    assert float(w.abs().max()) <= 0.05 and abs(float(w.std()) - 0.05 / 3 ** 0.5) < 0.005


def test_embedding_regularizer_and_constraint_follow_keras_layout():
    emb = build(["Embedding(6, 3, embeddings_regularizer=l2(0.01), embeddings_constraint=max_norm(1.0))"], (4,))[0]
    reg = registry(emb)
    assert reg.penalties == {"weight": reglab.L2(0.01)}
    (con,) = reg.constraints.values()
    assert isinstance(con, reglab.MaxNorm) and con.dim == (0,)
    with torch.no_grad():
        emb.weight.copy_(torch.arange(18.0).view(6, 3))
    w = emb.weight.detach().double().numpy()
    # Keras's MaxNorm(axis=0) on its (input_dim, output_dim) table: each column's norm over the vocabulary
    norms = np.sqrt((w ** 2).sum(0, keepdims=True))
    want = w * np.clip(norms, 0, 1.0) / (1e-7 + norms)
    reglab.apply_constraints(emb)
    np.testing.assert_allclose(emb.weight.detach().numpy(), want, rtol=1e-6)
    per_token = registry(build(["Embedding(6, 3, embeddings_constraint=max_norm(1.0, axis=1))"], (4,))[0]).constraints
    assert per_token["weight"].dim == (1,)
    assert registry(build(["Embedding(6, 3, embeddings_constraint=unit_norm(1))"], (4,))[0]).constraints["weight"].dim == (1,)
    w = emb.weight.detach()
    assert float(reg.penalties["weight"](w)) == pytest.approx(0.01 * float((w ** 2).sum()))


# ------------------------------------------------------------------------ SpatialDropout1D/2D

def test_spatial_dropout_modules_and_their_population_sites():
    seq = build(["SpatialDropout1D(0.3)"], (6, 3))[0]
    assert type(seq) is SequenceDropout and seq.p == 0.3
    conv = build(["Conv1D(4, 2)", "SpatialDropout1D(0.3)"], (6, 3))
    assert types(conv) == [ChannelsFirst, nn.Conv1d, nn.Dropout1d] and conv[-1].p == 0.3
    after_rnn = build(["Conv1D(4, 2)", "LSTM(5, return_sequences=True)", "SpatialDropout1D(0.3)"], (6, 3))
    assert type(after_rnn[-1]) is SequenceDropout
    img = build(["SpatialDropout2D(0.2)"], (3, 8, 8))[0]
    assert type(img) is nn.Dropout2d and img.p == 0.2
    # each is a random layer the population draws per member, with Keras's noise shape
    assert site_kind(seq) is SequenceDropout and noise_shape(SequenceDropout, (4, 6, 3)) == (4, 1, 3)
    assert site_kind(conv[-1]) is nn.Dropout1d and noise_shape(nn.Dropout1d, (4, 4, 5)) == (4, 4, 1)
    assert site_kind(img) is nn.Dropout2d and noise_shape(nn.Dropout2d, (4, 3, 8, 8)) == (4, 3, 1, 1)


def test_spatial_dropout_drops_whole_features_and_channels():
    torch.manual_seed(0)
    x = torch.ones(64, 5, 6)
    y = build(["SpatialDropout1D(0.5)"], (5, 6))[0].train()(x)        # (N, steps, features)
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(y, y[:, :1].expand_as(y))                      # one mask per sample, shared by every step
    y = build(["Conv1D(6, 1)", "SpatialDropout1D(0.5)"], (5, 6))[-1].train()(x)   # (N, C, steps)
    assert torch.equal(y, y[:, :, :1].expand_as(y)) and set(y.unique().tolist()) == {0.0, 2.0}
    x = torch.ones(32, 3, 4, 4)
    layer = build(["SpatialDropout2D(0.5)"], (3, 4, 4))[0]
    y = layer.train()(x)
    assert torch.equal(y, y[:, :, :1, :1].expand_as(y)) and set(y.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(layer.eval()(x), x)


# --------------------------------------------------------------- Conv1D layouts and the others

def test_stacked_conv1d_and_a_recurrent_layer_after_it_keep_keras_channels():
    """A Conv1D works on (N, C, steps): a second Conv1D takes its channels, pooling its steps, and an
    LSTM after it gets (N, steps, C) again, as Keras's channels-last layers do."""
    model = build(["Conv1D(4, 3)", "Conv1D(6, 3)", "MaxPooling1D(2)", "LSTM(5, return_sequences=True)",
                   "MaxPooling1D(2)", "Flatten()", "Dense(1)"], (12, 2))
    assert types(model) == [ChannelsFirst, nn.Conv1d, nn.Conv1d, nn.MaxPool1d, ChannelsFirst, nn.LSTM, RNNOutput,
                            ChannelsFirst, nn.MaxPool1d, nn.Flatten, nn.Linear]
    assert (model[1].in_channels, model[2].in_channels, model[5].input_size) == (2, 4, 6)
    assert model[-1].in_features == 5 * 2
    x = torch.randn(3, 12, 2)
    h = torch.nn.functional.conv1d(torch.nn.functional.conv1d(x.transpose(1, 2), model[1].weight, model[1].bias),
                                   model[2].weight, model[2].bias)
    h = model[5](torch.nn.functional.max_pool1d(h, 2).transpose(1, 2))[0]
    with torch.no_grad():
        torch.testing.assert_close(model[:7](x), h)


# ------------------------------------------------------------- populations equal standalone fits

def tabular(n=48, d=5, seed=0):
    g = np.random.default_rng(seed)
    X = g.normal(size=(n, d))
    return X, ((X[:, 0] + X[:, 1] ** 2) > 1).astype(float)


def tokens(n=48, steps=6, vocab=12, seed=0):
    g = np.random.default_rng(seed)
    X = g.integers(0, vocab, size=(n, steps))
    return X, (X == 3).any(1).astype(float)


def images(n=36, seed=0):
    g = np.random.default_rng(seed)
    X = g.normal(size=(n, 2, 6, 6))
    return X, (X[:, 0, :3].sum((1, 2)) > 0).astype(float)


def lines_model(lines, shape):
    def make(rate=0.0, l2=1e-3):
        return build([line.format(rate=rate, l2=l2) for line in lines], shape, task="binary")
    return make


FAMILIES = {
    "dense-batchnorm-layernorm": (tabular, (5,), [
        "Dense(8, activation='relu')", "BatchNormalization(beta_regularizer=l2({l2}))", "Dropout({rate})",
        "LayerNormalization()", "Dense(1, activation='sigmoid')"], 31),        # 32 rows: the last batch has one
    "embedding-sequence": (tokens, (6,), [
        "Embedding(12, 4, embeddings_regularizer=l2({l2}))", "SpatialDropout1D({rate})", "BatchNormalization()",
        "Conv1D(3, 2, activation='relu')", "SpatialDropout1D({rate})", "BatchNormalization(center=False)",
        "LayerNormalization(scale=False)", "LSTM(3)", "Dense(1, activation='sigmoid')"], 16),
    "conv2d-spatial": (images, (2, 6, 6), [
        "Conv2D(3, 3, padding='same', kernel_regularizer=l2({l2}))", "BatchNormalization()", "SpatialDropout2D({rate})",
        "LayerNormalization()", "MaxPooling2D(2)", "Flatten()", "Dense(1, activation='sigmoid')"], 16),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_population_members_equal_standalone_fits(family, float64):
    data, shape, lines, batch_size = FAMILIES[family]
    check_family(lines_model(lines, shape), data(), [dict(rate=0.0), dict(rate=0.4, l2=1e-2)], seeds=(0, 1),
                 epochs=4, batch_size=batch_size)


# ------------------------------------------------------------------------------ studies end to end

def test_a_study_with_normalisation_and_spatial_dropout_runs(tmp_path):
    study = from_dict({
        "name": "norm", "seeds": 2, "data": {"name": "digits", "shape": "sequence", "train": 240},
        "model": {"layers": ["BatchNormalization()", "SpatialDropout1D(0.1)", "LSTM(6)", "LayerNormalization()",
                             "Dense(10, activation='softmax')"]},
        "training": {"epochs": 2, "batch_size": 64},
        "variants": {"none": {}, "spatial": {"layers": {"1": {"rate": 0.3}},
                                             "insert": {"0": "LayerNormalization(gamma_regularizer=l2(0.01))"}}}})
    result = run(study)
    assert len(result.records) == 4 and {r["variant"] for r in result.records} == {"none", "spatial"}
    assert all(np.isfinite(r["metrics"]["test_loss"]) for r in result.records)
    snippet = next(r for r in result.records if r["variant"] == "spatial")["extra"]["snippet"]
    assert "reglab.KerasBatchNorm(8, eps=0.001, momentum=0.01, axis=-1)" in snippet
    assert "reglab.SequenceDropout(p=0.3)" in snippet and "nn.LayerNorm(8, eps=0.001)" in snippet


def test_an_image_study_with_batchnorm_and_spatial_dropout2d_runs():
    study = from_dict({
        "name": "img", "seeds": 2, "data": {"name": "digits", "shape": "image", "train": 200},
        "model": {"layers": ["Conv2D(4, 3, activation='relu')", "BatchNormalization()", "SpatialDropout2D(0.2)",
                             "LayerNormalization()", "Flatten()", "Dense(10, activation='softmax')"]},
        "training": {"epochs": 2, "batch_size": 64}, "variants": {"none": {}}})
    result = run(study)
    assert len(result.records) == 2 and all(np.isfinite(r["metrics"]["test_loss"]) for r in result.records)


TOKENS_STUDY = """\
name = "tokens"
seeds = 2
[data]
name = "npz"
path = "tokens.npz"
standardize = false
[model]
layers = ["Embedding(15, 4)", "SpatialDropout1D(0.2)", "Flatten()", "Dense(1, activation='sigmoid')"]
[training]
epochs = 3
batch_size = 32
[variants.none]
[variants.l2]
layers = { 0 = { embeddings_regularizer = "l2(0.001)", embeddings_constraint = "max_norm(2)" } }
"""


def write_tokens(folder, low=0, high=15):
    g = np.random.default_rng(0)
    X = g.integers(low, high, size=(120, 6))
    np.savez(folder / "tokens.npz", X=X, y=(X == 3).any(1).astype(np.int64))


def test_an_embedding_study_on_integer_tokens_runs(tmp_path):
    write_tokens(tmp_path)
    (tmp_path / "study.toml").write_text(TOKENS_STUDY)
    study = load(tmp_path / "study.toml")
    dataset = prepare(study)
    assert dataset.info["integer_inputs"] is True and dataset.X_train.dtype == np.int64
    result = run(study, dataset=dataset)
    assert len(result.records) == 4 and all(np.isfinite(r["metrics"]["test_loss"]) for r in result.records)
    snippet = next(r for r in result.records if r["variant"] == "l2")["extra"]["snippet"]
    assert "nn.Embedding(15, 4)" in snippet and "reglab.SequenceDropout(p=0.2)" in snippet
    assert "reglab.MaxNorm(max_value=2.0, dim=(0,))" in snippet or "dim=[0]" in snippet


def test_an_embedding_study_refuses_float_inputs_and_token_ids_out_of_its_vocabulary(tmp_path):
    write_tokens(tmp_path)
    (tmp_path / "study.toml").write_text(TOKENS_STUDY.replace("standardize = false", "standardize = true"))
    with pytest.raises(StudyError, match=r"variants\.none: the model has an nn\.Embedding, which needs integer token "
                                         r"ids, but the study's inputs are floats"):
        prepare(load(tmp_path / "study.toml"))
    (tmp_path / "study.toml").write_text(TOKENS_STUDY.replace("Embedding(15, 4)", "Embedding(10, 4)"))
    with pytest.raises(StudyError, match=r"variants\.none: the data holds token id 14, but Embedding\(input_dim=10\) "
                                         r"takes ids 0 to 9; raise input_dim to at least 15\.$"):
        prepare(load(tmp_path / "study.toml"))
    write_tokens(tmp_path, low=-1)
    (tmp_path / "study.toml").write_text(TOKENS_STUDY)
    with pytest.raises(StudyError, match=r"the data holds token id -1, but an Embedding takes ids 0 to 14; map the "
                                         r"tokens to ids >= 0\."):
        prepare(load(tmp_path / "study.toml"))


def test_integer_columns_reach_a_model_without_embedding_as_floats(tmp_path):
    """Unscaled integer columns stay int64 in the dataset; a Dense model gets them as floats in
    training, in the test predictions and in the activation statistics of each record."""
    (tmp_path / "d.csv").write_text("a,b,y\n" + "".join(f"{i % 7},{i % 5},{i % 2}\n" for i in range(60)))
    study = from_dict({"name": "ints", "seeds": 1, "data": {"name": "csv", "path": "d.csv", "label": "y",
                                                            "standardize": False},
                       "model": {"layers": ["Dense(4, activation='relu')", "Dense(1, activation='sigmoid')"]},
                       "training": {"epochs": 1}, "variants": {"none": {}}}, base_dir=tmp_path)
    result = run(study)
    assert result.records[0]["extra"]["sparsity"] and np.isfinite(result.records[0]["metrics"]["test_loss"])


@pytest.mark.parametrize("shape, lines, data", [
    ((6, 3), ["BatchNormalization(center=False, gamma_regularizer=l2(0.01))", "Conv1D(4, 2)", "SpatialDropout1D(0.2)",
              "BatchNormalization()", "LayerNormalization()", "Flatten()", "Dense(1, activation='sigmoid')"], "floats"),
    ((1, 6, 6), ["Conv2D(2, 3)", "BatchNormalization(scale=False)", "SpatialDropout2D(0.2)",
                 "LayerNormalization(scale=False)", "Flatten()", "Dense(1, activation='sigmoid')"], "floats"),
    ((6,), ["Embedding(12, 3, embeddings_constraint=max_norm(2))", "LayerNormalization(center=False)", "Flatten()",
            "Dense(1, activation='sigmoid')"], "tokens"),
])
def test_the_new_layers_are_written_as_torch_code(shape, lines, data):
    study = from_dict({"name": "code", "data": {"name": "moons"}, "model": {"layers": lines},
                       "training": {"epochs": 1}, "variants": {"none": {}}})
    variant = study.variants[0]
    builder = S.builder(study, shape, "binary")
    code = variant_snippet(study, variant, builder("none"), task="binary")
    assert "could not be written" not in code
    g = np.random.default_rng(0)
    X = g.integers(0, 12, size=(10, *shape)) if data == "tokens" else g.normal(size=(10, *shape)).astype(np.float32)
    y = g.integers(0, 2, 10).astype(np.float32)
    namespace = execute(code, (X, y), (X, y))
    if data == "tokens":
        built, expected = namespace["model"], builder("none")
        assert str(built) == str(expected)
        built.load_state_dict(expected.state_dict())
        with torch.no_grad():
            assert torch.equal(built.eval()(torch.as_tensor(X)), expected.eval()(torch.as_tensor(X)))
        assert registry(built[0]).constraints["weight"].dim in ((0,), [0])
    else:
        assert_same_model(namespace["model"], builder("none"), X)


# --------------------------------------------------------------------------------- the errors

ERRORS = [
    (["BatchNormalization(axis=1)"], (3,), r"only axis=-1 \(Keras's default: the features, or an image's channels\) "
                                           r"is supported; remove axis=1\."),
    (["BatchNormalization(momentum=1.5)"], (3,), r"momentum must be a number in \[0, 1\]\. Got 1\.5\."),
    (["BatchNormalization(epsilon=0)"], (3,), r"epsilon must be a finite number > 0\. Got 0\."),
    (["BatchNormalization(center='yes')"], (3,), r"center must be True or False\. Got 'yes'\."),
    (["BatchNormalization(center=False, beta_regularizer=l2(0.1))"], (3,),
     r"beta_regularizer needs center=True \(center=False drops beta\); remove one of them\."),
    (["LayerNormalization(scale=False, gamma_constraint=max_norm(2))"], (3,),
     r"gamma_constraint needs scale=True \(scale=False drops gamma\); remove one of them\."),
    (["BatchNormalization(gamma_regularizer=orthogonal(0.1))"], (3,), r"Orthogonal needs a 2-D weight"),
    (["LayerNormalization(axis=[1, 2])"], (3,), r"only axis=-1 .* remove axis="),
    (["BatchNormalization()"], (2, 2, 2, 2), r"BatchNormalization needs samples of shape \(features,\), \(steps, "
                                             r"features\) or \(channels, height, width\); these have shape"),
    (["Dense(4)", "Embedding(10, 4)"], (3,), r"layer 1 'Embedding\(10, 4\)': Embedding must be the first layer: it "
                                             r"takes integer token ids, and the layers before it give floats; move it first\."),
    (["Embedding(10, 4, mask_zero=True)"], (3,), r"mask_zero=True is not supported \(PyTorch layers take no Keras "
                                                 r"mask\); remove it"),
    (["Embedding(10, 4, mask_zero=1)"], (3,), r"mask_zero must be True or False\. Got 1\."),
    (["Embedding(10, 4)"], (1, 8, 8), r"Embedding needs samples of token ids of shape \(steps,\); these have shape "
                                      r"\(1, 8, 8\)\."),
    (["Embedding(10, 4, input_length=5)"], (7,), r"input_length=5 does not fit the data, whose samples have 7 steps; "
                                                 r"write input_length=7 or leave it out\."),
    (["Embedding(output_dim=4)"], (7,), r"input_dim must be a positive int\. Got None\."),
    (["Embedding(10)"], (7,), r"output_dim must be a positive int\. Got None\."),
    (["Embedding(100000, 10000)"], (7,), r"this layer would hold 1,000,000,000 weights .* lower input_dim or output_dim\."),
    (["SpatialDropout1D(0.2)"], (5,), r"SpatialDropout1D needs samples of shape \(steps, features\); these have shape "
                                      r"\(5,\); use Dropout, or SpatialDropout2D for images\."),
    (["SpatialDropout2D(0.2)"], (5, 3), r"SpatialDropout2D needs samples of shape \(channels, height, width\); these "
                                        r"have shape \(5, 3\); use Dropout, or SpatialDropout1D for sequences\."),
    (["SpatialDropout2D(1)"], (1, 4, 4), r"rate must be a number in \[0, 1\)\. Got 1\."),
]


@pytest.mark.parametrize("lines, shape, message", ERRORS)
def test_each_error_is_one_line_naming_the_layer_and_the_fix(lines, shape, message):
    with pytest.raises(ModelError, match=message) as info:
        build(lines, shape)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"layer {len(lines) - 1} {lines[-1]!r}:")


PARSE_ERRORS = [
    ("Dense(4, gamma_regularizer=l2(0.1))", r"'Dense\(4, gamma_regularizer=l2\(0\.1\)\)': Dense has no argument "
                                            r"'gamma_regularizer': it has no gamma weight; BatchNormalization, "
                                            r"LayerNormalization take gamma_regularizer"),
    ("Dense(4, embeddings_regularizer=l2(0.1))", r"it has no embeddings weight; Embedding takes embeddings_regularizer"),
    ("LayerNormalization(rms_scaling=True)", r"LayerNormalization has no argument 'rms_scaling'; LayerNormalization "
                                             r"takes axis, beta_constraint, beta_regularizer, center, epsilon"),
    ("BatchNormalization(momentun=0.9)", r"BatchNormalization has no argument 'momentun'; did you mean 'momentum'\?"),
    ("BatchNormalization(beta_regularizer=l3(0.1))", r"beta_regularizer: Unknown penalty 'l3'"),
    ("Embedding(10, 4, embeddings_constraint=max_nrm(2))", r"embeddings_constraint: Unknown constraint 'max_nrm'"),
    ("Embedding(10, 4, embeddings_constraint=max_norm(2, axis=2))", r"embeddings_constraint: axis=2 does not fit the "
     r"2-D embedding table; use axis=0 \(each embedding dimension, Keras's default\) or axis=1 \(each token's vector\)"),
    ("SpatialDropout1D(0.1, 0.2)", r"SpatialDropout1D takes at most 1 positional argument\(s\) \(rate\)"),
    ("BatchNormalisation()", r"Unknown layer 'BatchNormalisation'.*did you mean 'BatchNormalization'\?"),
]


@pytest.mark.parametrize("line, message", PARSE_ERRORS)
def test_a_study_file_with_a_bad_new_layer_line_is_refused_when_read(line, message, tmp_path):
    with pytest.raises(ModelError, match=message) as info:
        S.keras.parse_line(line)
    assert "\n" not in str(info.value)
    with pytest.raises(StudyError, match=message):
        from_dict({"name": "x", "data": {"name": "moons"}, "model": {"layers": [line, "Dense(1)"]}})


def test_an_embedding_first_ignores_the_data_check_of_input_dim():
    """Keras's Embedding(input_dim=...) is the vocabulary size, not the samples' width."""
    assert type(build(["Embedding(input_dim=50, output_dim=4, input_shape=(7,))"], (7,))[0]) is nn.Embedding
    with pytest.raises(ModelError, match=r"input_shape=\(5,\) does not fit the data"):
        build(["Embedding(50, 4, input_shape=(5,))"], (7,))
