"""Training the way practitioners train (issue 15 parts 1-4): losses, class and sample weights,
label smoothing, RMSprop/Adagrad and torch.optim classes, gradient clipping, learning-rate
schedules, callbacks in populations, and fit keeping the weights it is given.

Every formula is checked against a NumPy transcription of Keras's (or PyTorch's) definition, and
every population option against the standalone fit of each member."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reglab
from reglab import optim, schedules, tasks
from report_helpers import study_toml


def blobs(n=64, d=3, classes=2, seed=0):
    g = np.random.default_rng(seed)
    X = g.normal(size=(n, d)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64) if classes == 2 else g.integers(0, classes, n)
    return X, y


def mlp(d=3, out=1, hidden=8):
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, out))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


# --- losses: label smoothing, class and sample weights, callables ------------------------------

def keras_binary_crossentropy(y, logits, smoothing):
    """Keras: y_smooth = y * (1 - s) + 0.5 * s, then cross-entropy of the sigmoid."""
    y = y * (1 - smoothing) + 0.5 * smoothing
    p = sigmoid(logits)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_binary_label_smoothing_is_keras_formula():
    g = np.random.default_rng(1)
    logits, y = g.normal(size=(20, 1)), g.integers(0, 2, 20)
    obj = tasks.Objective(tasks.get("binary"), label_smoothing=0.2)
    got = obj.sample_loss(torch.tensor(logits), torch.tensor(y, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, keras_binary_crossentropy(y, logits[:, 0], 0.2), rtol=1e-10)


def test_multiclass_label_smoothing_is_torch_and_keras_categorical():
    g = np.random.default_rng(2)
    logits, y = g.normal(size=(20, 4)), g.integers(0, 4, 20)
    obj = tasks.Objective(tasks.get("multiclass"), label_smoothing=0.3)
    got = obj.sample_loss(torch.tensor(logits), torch.tensor(y)).numpy()
    torch_ref = F.cross_entropy(torch.tensor(logits), torch.tensor(y), label_smoothing=0.3, reduction="none").numpy()
    target = np.eye(4)[y] * (1 - 0.3) + 0.3 / 4     # Keras's categorical_crossentropy(label_smoothing=0.3)
    keras_ref = -(target * log_softmax(logits)).sum(-1)
    np.testing.assert_allclose(got, torch_ref, rtol=1e-10)
    np.testing.assert_allclose(got, keras_ref, rtol=1e-10)


def test_balanced_class_weight_is_scikit_learns():
    from sklearn.utils.class_weight import compute_class_weight

    y = torch.tensor([0, 0, 0, 1, 2, 2])
    got = tasks.class_weights("balanced", y, tasks.get("multiclass"))
    np.testing.assert_allclose(got.numpy(), compute_class_weight("balanced", classes=np.arange(3), y=y.numpy()), rtol=1e-6)
    mapping = tasks.class_weights({1: 4.0}, y, tasks.get("multiclass"))   # missing classes weigh 1, as in Keras
    assert mapping.tolist() == [1.0, 4.0, 1.0]


def one_full_batch(**kwargs):
    """The first epoch's logged losses of a fit whose one batch is the whole set and whose
    optimizer does not move (so the logs are the initial model's)."""
    X, y = blobs(n=40)
    model = mlp()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(torch.tensor(X)).double().numpy()[:, 0]
    h = reglab.fit(model, (X, y), (X, y), epochs=1, batch_size=40, optimizer="sgd", lr=0.0, **kwargs)
    return h.history, out, y


def test_class_and_sample_weights_scale_each_sample_and_divide_by_the_batch_size():
    w = np.linspace(0.5, 2.0, 40)
    h, out, y = one_full_batch(class_weight={0: 1.0, 1: 3.0}, sample_weight=w)
    per_sample = keras_binary_crossentropy(y, out, 0.0)
    weights = np.where(y == 1, 3.0, 1.0) * w
    # Keras's sum_over_batch_size: sum of weighted losses / batch size (not / sum of weights)
    assert h["data_loss"][0] == pytest.approx((per_sample * weights).sum() / 40, rel=1e-6)
    # validation is unweighted, and so are metrics
    assert h["val_data_loss"][0] == pytest.approx(per_sample.mean(), rel=1e-6)
    assert h["accuracy"][0] == pytest.approx(((out > 0) == y).mean())


def test_a_callable_loss_per_sample_or_mean():
    def per_sample(logits, target):
        return F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")

    def mean(logits, target):
        return F.binary_cross_entropy_with_logits(logits[:, 0], target)

    base, _, _ = one_full_batch()
    for loss in (per_sample, mean):
        h, _, _ = one_full_batch(loss=loss)
        assert h["data_loss"][0] == pytest.approx(base["data_loss"][0], rel=1e-6)
        assert h["val_data_loss"][0] == pytest.approx(base["val_data_loss"][0], rel=1e-6)
    X, y = blobs(n=40)
    with pytest.raises(ValueError, match="one loss per sample"):
        reglab.fit(mlp(), (X, y), epochs=1, loss=lambda o, t: o[:3, 0])


# --- optimizers: Keras's RMSprop and Adagrad, clipping, torch.optim classes ---------------------

def keras_rmsprop(w, grads, lr, rho=0.9, momentum=0.0, eps=1e-7, centered=False):
    v, a, m = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for g in grads:
        v = rho * v + (1 - rho) * g * g
        if centered:
            a = rho * a + (1 - rho) * g
            denom = v - a * a + eps
        else:
            denom = v + eps
        inc = lr * g / np.sqrt(denom)
        if momentum > 0:
            m = momentum * m + inc
            w = w - m
        else:
            w = w - inc
    return w


def keras_adagrad(w, grads, lr, init=0.1, eps=1e-7):
    acc = np.full_like(w, init)
    for g in grads:
        acc = acc + g * g
        w = w - lr * g / np.sqrt(acc + eps)
    return w


@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.9}, {"centered": True}, {"centered": True, "momentum": 0.5}])
def test_rmsprop_is_keras(kwargs):
    g = np.random.default_rng(3)
    w0, grads = g.normal(size=(4, 3)), [g.normal(size=(4, 3)) for _ in range(6)]
    p = torch.tensor(w0, requires_grad=True)
    opt = optim.RMSprop([p], lr=0.01, **kwargs)
    for gr in grads:
        opt.step([torch.tensor(gr)])
    np.testing.assert_allclose(p.detach().numpy(), keras_rmsprop(w0, grads, 0.01, **kwargs), rtol=1e-12)


def test_adagrad_is_keras():
    g = np.random.default_rng(4)
    w0, grads = g.normal(size=(5,)), [g.normal(size=(5,)) for _ in range(6)]
    p = torch.tensor(w0, requires_grad=True)
    opt = optim.Adagrad([p], lr=0.05)
    for gr in grads:
        opt.step([torch.tensor(gr)])
    np.testing.assert_allclose(p.detach().numpy(), keras_adagrad(w0, grads, 0.05), rtol=1e-12)


def keras_clip(grads, kind, c):
    if kind == "clipvalue":
        return [np.clip(g, -c, c) for g in grads]
    if kind == "clipnorm":
        return [g * c / max(np.sqrt((g * g).sum()), c) for g in grads]
    norm = np.sqrt(sum((g * g).sum() for g in grads))
    return [g * c / max(norm, c) for g in grads]


@pytest.mark.parametrize("kind", ["clipnorm", "clipvalue", "global_clipnorm"])
def test_clipping_is_keras_and_per_member_in_a_population(kind):
    g = np.random.default_rng(5)
    grads = [g.normal(size=(3, 4)) * 3, g.normal(size=(4,))]
    c = 0.7
    clip = optim.Clipping(**{kind: c})
    got = clip([torch.tensor(x) for x in grads], stacked=False)
    for a, b in zip(got, keras_clip(grads, kind, c)):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-12)
    # stacked: 3 members, each clipped by its own norms
    members = [[g.normal(size=(3, 4)) * s, g.normal(size=(4,)) * s] for s in (0.01, 1.0, 10.0)]
    stacked = clip([torch.tensor(np.stack([m[i] for m in members])) for i in range(2)], stacked=True)
    for k, m in enumerate(members):
        for i, ref in enumerate(keras_clip(m, kind, c)):
            np.testing.assert_allclose(stacked[i][k].numpy(), ref, rtol=1e-12)


def test_fit_takes_a_torch_optimizer_class():
    X, y = blobs()
    a, b = mlp(), mlp()
    b.load_state_dict(a.state_dict())
    reglab.fit(a, (X, y), epochs=2, batch_size=64, optimizer=functools.partial(torch.optim.SGD, momentum=0.9), lr=0.1)
    # the same by hand: one full batch per epoch, mean BCE, torch.optim.SGD
    opt = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(b(torch.tensor(X))[:, 0], torch.tensor(y, dtype=torch.float32)).backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_population_refuses_a_coupled_torch_optimizer():
    X, y = blobs()
    with pytest.raises(ValueError, match="LBFGS is not element-wise"):
        reglab.train_population(mlp, None, [0], train=(X, y), epochs=1, optimizer=torch.optim.LBFGS)


# --- schedules ------------------------------------------------------------------------------------

def keras_cosine(step, lr, decay_steps, alpha=0.0, warmup_steps=0, start=0.0):
    if warmup_steps:
        step = min(step, decay_steps + warmup_steps)
        if step < warmup_steps:
            return (lr - start) * step / warmup_steps + start
        step -= warmup_steps
    step = min(step, decay_steps)
    return lr * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * step / decay_steps)) + alpha)


def test_decay_schedules_are_keras_formulas():
    base = np.array([0.1, 0.02])
    exp = schedules.ExponentialDecay(7, 0.5)
    stair = schedules.StepDecay(7, 0.5)
    cos = schedules.CosineDecay(20, alpha=0.1)
    warm = schedules.CosineDecay(20, alpha=0.0, warmup_steps=5, warmup_start=0.001)
    for step in range(0, 40, 3):
        np.testing.assert_allclose(exp.rate(step, base), base * 0.5 ** (step / 7), rtol=1e-12)
        np.testing.assert_allclose(stair.rate(step, base), base * 0.5 ** (step // 7), rtol=1e-12)
        np.testing.assert_allclose(cos.rate(step, base), [keras_cosine(step, b, 20, 0.1) for b in base], rtol=1e-12)
        np.testing.assert_allclose(warm.rate(step, base), [keras_cosine(step, b, 20, 0.0, 5, 0.001) for b in base],
                                   rtol=1e-12)


def test_reduce_lr_on_plateau_follows_keras():
    """Keras 3's rule, traced by hand: patience 2, factor 0.5, cooldown 1, min_delta 0."""
    s = schedules.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, cooldown=1, min_delta=0.0, min_lr=0.03)
    s.start(np.array([0.1]))
    losses = [1.0, 0.9, 0.95, 0.93, 0.92, 0.91, 0.95, 0.96, 0.97, 0.98]
    rates = []
    for epoch, v in enumerate(losses):
        s.epoch_end(epoch, {"val_loss": np.array([v])}, np.array([True]))
        rates.append(float(s.current[0]))
    # epochs 2, 3 do not improve on 0.9: wait 2 -> 0.05, cooldown 1. Epoch 4: the cooldown counts down to 0
    # (wait reset) and, no longer cooling, 0.92 counts (wait 1); epoch 5 -> wait 2 -> 0.025, floored at 0.03.
    # Then 0.03 is not above min_lr, so it stays.
    assert rates == [0.1, 0.1, 0.1, 0.05, 0.05, 0.03, 0.03, 0.03, 0.03, 0.03]


def test_the_schedule_sets_each_steps_rate():
    """SGD moves by lr_t * g: a schedule's rate reaches the update of step t."""
    X, y = blobs(n=64)
    seen = []

    class Spy(reglab.Callback):
        def on_batch_end(self, trainer, batch, **kw):
            seen.append(trainer.optimizer.lr)

    reglab.fit(mlp(), (X, y), epochs=2, batch_size=16, optimizer="sgd", lr=0.1,
               schedule=schedules.ExponentialDecay(2, 0.5), callbacks=[Spy()])
    np.testing.assert_allclose(seen, [0.1 * 0.5 ** (t / 2) for t in range(8)], rtol=1e-12)
    seen.clear()
    reglab.fit(mlp(), (X, y), epochs=3, batch_size=32, lr=0.1, schedule=lambda epoch: 0.1 / (epoch + 1),
               callbacks=[Spy()])
    np.testing.assert_allclose(seen, [0.1, 0.1, 0.05, 0.05, 0.1 / 3, 0.1 / 3], rtol=1e-12)


# --- populations: per-member options and callbacks equal each member's fit ---------------------

def assert_members_equal_fits(result, build, configs, seeds, fit_kwargs, per_config=None, rtol=1e-5):
    for i, m in enumerate(result.members):
        model = build(**m["config"])
        extra = per_config(m["config_index"]) if per_config else {}
        h = reglab.fit(model, **fit_kwargs, **extra, seed=m["seed"], preset="keras", progress=False)
        for a, b in zip(model.parameters(), result.models[i].parameters()):
            torch.testing.assert_close(a, b, rtol=rtol, atol=1e-6)
        np.testing.assert_allclose(result.history["loss"][i][:len(h.epoch)], h.history["loss"], rtol=rtol)


def test_population_members_with_their_own_smoothing_weights_and_schedule():
    X, y = blobs(n=96, classes=3)
    Xv, yv = blobs(n=40, classes=3, seed=1)
    build = lambda width=8: mlp(out=3, hidden=width)
    smoothing, cw = [0.0, 0.2], [None, "balanced"]
    common = dict(train=(X, y), validation=(Xv, yv), epochs=4, batch_size=16, optimizer="rmsprop", clipnorm=0.5,
                  sample_weight=np.linspace(0.5, 1.5, 96),
                  schedule={"kind": "cosine", "decay_steps": 20, "warmup_steps": 3})
    result = reglab.train_population(build, [{}, {}], [0, 1], label_smoothing=smoothing, class_weight=cw,
                                     progress=False, **common)
    assert_members_equal_fits(result, build, [{}, {}], [0, 1], common,
                              lambda c: {"label_smoothing": smoothing[c], "class_weight": cw[c]})


def test_population_plateau_schedule_and_penalty_schedule_per_member():
    X, y = blobs(n=96)
    Xv, yv = blobs(n=40, seed=1)

    def build(l2=1e-3):
        model = mlp()
        reglab.regularize(model[0], kernel=reglab.L2(l2))
        return model

    configs = [{"l2": 1e-3}, {"l2": 1e-1}]
    common = dict(train=(X, y), validation=(Xv, yv), epochs=6, batch_size=32, lr=0.02,
                  schedule=reglab.ReduceLROnPlateau(patience=0, factor=0.5, min_delta=0.0))
    logs_seen = []

    class Reader(reglab.Callback):
        def on_epoch_end(self, trainer, epoch, logs, **kw):
            logs_seen.append((epoch, logs["val_loss"].shape, trainer.active.copy()))

    result = reglab.train_population(build, configs, [0, 3], progress=False,
                                     callbacks=[reglab.PenaltySchedule({0: 1.0, 3: 5.0}), Reader()], **common)
    assert [e for e, _, _ in logs_seen] == list(range(6)) and logs_seen[0][1] == (4,)
    for i, m in enumerate(result.members):
        model = build(**m["config"])
        h = reglab.fit(model, **common, seed=m["seed"], preset="keras", progress=False,
                       callbacks=[reglab.PenaltySchedule({0: 1.0, 3: 5.0})])
        for a, b in zip(model.parameters(), result.models[i].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.history["val_loss"][i], h.history["val_loss"], rtol=1e-5)


def test_population_with_a_callable_loss_and_early_stopping_in_callbacks():
    X, y = blobs(n=64)
    Xv, yv = blobs(n=32, seed=1)

    def focal(logits, target, gamma=2.0):
        p = torch.sigmoid(logits[:, 0])
        pt = torch.where(target > 0.5, p, 1 - p)
        return -(1 - pt) ** gamma * torch.log(pt.clamp_min(1e-12))

    es = reglab.EarlyStopping(patience=1, min_delta=0.05, restore_best_weights=True)
    result = reglab.train_population(mlp, None, [0, 1, 2], train=(X, y), validation=(Xv, yv), epochs=8, batch_size=16,
                                     loss=focal, callbacks=[es], progress=False)
    for i, m in enumerate(result.members):
        model = mlp()
        h = reglab.fit(model, (X, y), (Xv, yv), epochs=8, batch_size=16, loss=focal, seed=m["seed"], preset="keras",
                       callbacks=[reglab.EarlyStopping(patience=1, min_delta=0.05, restore_best_weights=True)],
                       progress=False)
        assert result.epochs_run[i] == len(h.epoch)
        for a, b in zip(model.parameters(), result.models[i].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_population_with_an_elementwise_torch_optimizer():
    X, y = blobs(n=64)
    result = reglab.train_population(mlp, None, [0, 1], train=(X, y), epochs=3, batch_size=16,
                                     optimizer=torch.optim.Adam, lr=0.01, progress=False)
    for i, m in enumerate(result.members):
        model = mlp()
        reglab.fit(model, (X, y), epochs=3, batch_size=16, optimizer=torch.optim.Adam, lr=0.01, seed=m["seed"],
                   preset="keras", progress=False)
        for a, b in zip(model.parameters(), result.models[i].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --- fit keeps the weights it is given -----------------------------------------------------------

def test_fit_keeps_the_models_weights_unless_a_preset_asks():
    X, y = blobs()
    model = mlp()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.05)      # a custom (or pretrained) initialisation
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reglab.fit(model, (X, y), epochs=1, optimizer="sgd", lr=0.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    reglab.fit(model, (X, y), epochs=1, optimizer="sgd", lr=0.0, preset="keras", warm_start=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    reglab.fit(model, (X, y), epochs=1, optimizer="sgd", lr=0.0, preset="keras", seed=3)
    reference = reglab.initialize(mlp(), "keras", 3)
    assert all(torch.equal(reference.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_population_with_preset_none_keeps_what_build_gives():
    X, y = blobs()

    def build():
        model = mlp()
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(0.05)
        return model

    result = reglab.train_population(build, None, [0, 1], train=(X, y), epochs=1, optimizer="sgd", lr=0.0,
                                     preset=None, progress=False)
    for model in result.models:
        assert all(bool((p == 0.05).all()) for p in model.parameters())


# --- sample weights in a study file: a CSV column --------------------------------------------------

def test_a_csv_weight_column_weighs_a_studys_training_rows(tmp_path):
    from reglab import diagnose
    from reglab.study import load, run

    g = np.random.default_rng(0)
    X = g.normal(size=(150, 3))
    y = (X[:, 0] + 0.3 * g.normal(size=150) > 0).astype(int)
    w = np.where(y == 1, 3.0, 0.5)
    rows = ["a,b,c,w,label"] + [f"{a:.5f},{b:.5f},{c:.5f},{wi},{yi}" for (a, b, c), wi, yi in zip(X, w, y)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "s.toml").write_text(
        'name = "weighted"\nseeds = 2\n[data]\nname = "csv"\npath = "d.csv"\nlabel = "label"\nweight = "w"\n'
        "[training]\nepochs = 4\n[model]\n"
        'layers = ["Dense(8, input_dim=3, activation=\'relu\')", "Dense(1, activation=\'sigmoid\')"]\n[variants.none]\n')
    study = load(tmp_path / "s.toml")
    result = run(study)
    ds = result.dataset
    assert ds.X_train.shape[1] == 3 and ds.w_train is not None and "weigh" in ds.info["sample_weight"]
    record = result.records[0]
    code = record["extra"]["snippet"]
    assert "sample_weight=w_train" in code
    namespace = {"train": (ds.X_train, ds.y_train), "validation": ds.validation(), "w_train": ds.w_train}
    exec(compile(code, "<snippet>", "exec"), namespace)   # noqa: S102 - the snippet retrains the member
    norms = diagnose.weight_norms(namespace["model"])
    for layer, values in record["extra"]["weight_norms"].items():
        assert norms[layer] == pytest.approx(values, rel=1e-5)
    # and the weights matter: unweighted, the same member ends elsewhere
    plain = mlp(3)
    reglab.fit(plain, (ds.X_train, ds.y_train), ds.validation(), epochs=4, seed=record["seed"], preset="keras",
               progress=False)
    assert abs(diagnose.weight_norms(plain)["0"]["l2"] - norms["0"]["l2"]) > 1e-3


@pytest.mark.parametrize("csv, spec, message", [
    ("a,w,label\n1,2,0\n2,-1,1\n", {"weight": "w"}, "weight -1 is negative"),
    ("a,w,label\n1,2,0\n2,x,1\n", {"weight": "w"}, "column 'w'"),
    ("a,w,label\n1,2,0\n2,1,1\n", {"weight": "v"}, "weight column 'v' is not a column"),
    ("a,w,label\n1,2,0\n2,1,1\n", {"weight": "label"}, "is the label and cannot also be the weight"),
    ("a,w,label\n1,2,0\n2,1,1\n", {"weight": "w", "features": ["a", "w"]}, "cannot also be a feature"),
])
def test_a_bad_weight_column_is_one_line(tmp_path, csv, spec, message):
    from reglab.data import DataError, load

    (tmp_path / "d.csv").write_text(csv)
    with pytest.raises(DataError, match=message):
        load({"name": "csv", "path": "d.csv", "label": "label", **spec}, base_dir=tmp_path)


def test_default_learning_rates_are_keras():
    """keras.optimizers.SGD() takes 0.01, Adam/AdamW/RMSprop/Adagrad 0.001."""
    X, y = blobs()
    for name, lr in (("sgd", 0.01), ("adam", 0.001), ("adamw", 0.001), ("rmsprop", 0.001), ("adagrad", 0.001)):
        assert reglab.fit(mlp(), (X, y), epochs=1, optimizer=name, progress=False).optimizer.lr == lr
    result = reglab.train_population(mlp, [{}, {}], [0], train=(X, y), epochs=1, optimizer="sgd", lr=[None, 0.5],
                                     progress=False)
    member = mlp()
    reglab.fit(member, (X, y), epochs=1, optimizer="sgd", seed=0, preset="keras", progress=False)
    for a, b in zip(member.parameters(), result.models[0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("data, training, message", [
    ('name = "moons"', 'class_weight = { "7" = 2.0 }', "variants.none: The 'class_weight' of \\[training\\] names class '7', but the classes are 0..1"),
    ('name = "diabetes"', "label_smoothing = 0.1", "label_smoothing applies to classification"),
    ('name = "diabetes"', 'class_weight = "balanced"', "class_weight.*regression"),
    ('name = "moons"', 'schedule = { kind = "plateau", monitor = "val_auc" }', "plateau schedule monitors 'val_auc'"),
])
def test_options_that_do_not_fit_the_data_are_refused_before_training(tmp_path, data, training, message):
    from click.testing import CliRunner

    from reglab.cli import main

    inputs = 2 if "moons" in data else 10
    (tmp_path / "s.toml").write_text(study_toml(name="opts", data=data, training=f"epochs = 2\n{training}",
                                                layers=[f"Dense(4, input_dim={inputs}, activation='relu')", "Dense(1)"]))
    db = tmp_path / "r.db"
    res = CliRunner().invoke(main, ["run", str(tmp_path / "s.toml"), "--db", str(db)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    import re
    assert re.search(message, res.output), res.output
    assert not db.exists()
