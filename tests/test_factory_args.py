"""A factory model's variants may change the factory's keyword arguments (`args`): a dropout rate, a
width — what a custom model takes in its constructor."""

from __future__ import annotations

import textwrap

import pytest
import torch

import reglab
from reglab.study import StudyError, from_dict, run
from reglab.study.snippet import variant_snippet

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, width=8, rate=0.0):
            super().__init__()
            self.inp, self.bn = nn.Linear(2, width), nn.BatchNorm1d(width)
            self.drop, self.out = nn.Dropout(rate), nn.Linear(width, 1)

        def forward(self, x):
            return self.out(self.drop(torch.relu(self.bn(self.inp(x)))))


    def build(width=8, rate=0.0):
        return Net(width, rate)
''')


def study_dict(**changes):
    raw = {"name": "args", "protocol": "compare", "seeds": 2, "data": {"name": "moons", "n_samples": 80},
           "model": {"factory": "args_factory:build", "args": {"width": 12}}, "training": {"epochs": 3},
           "variants": {"none": {}, "dropout": {"args": {"rate": 0.4}}}}
    raw.update(changes)
    return raw


@pytest.fixture
def factory_dir(tmp_path, monkeypatch):
    (tmp_path / "args_factory.py").write_text(FACTORY)
    monkeypatch.delitem(__import__("sys").modules, "args_factory", raising=False)
    return tmp_path


def test_variants_pass_their_args_to_the_factory(factory_dir):
    study = from_dict(study_dict(), base_dir=factory_dir)
    by_name = {v.name: v for v in study.variants}
    assert by_name["none"].args == {"width": 12} and by_name["dropout"].args == {"width": 12, "rate": 0.4}
    build = reglab.study.spec.builder(study, (2,), "binary")
    assert build("dropout").drop.p == 0.4 and build("none").drop.p == 0.0 and build("none").inp.out_features == 12
    done = run(study)
    models = {r["variant"] for r in done.records}
    assert models == {"none", "dropout"} and len(done.records) == 4
    import args_factory
    model = args_factory.build(width=12, rate=0.4)
    code = variant_snippet(study, by_name["dropout"], model, task="binary", seed=0)
    assert "build(width=12, rate=0.4)" in code
    assert isinstance(model.drop, torch.nn.Dropout) and model.drop.p == 0.4


def test_a_grid_over_a_factory_argument_gets_numbers(factory_dir):
    raw = study_dict(protocol="grid", grid={"variant": {"args": {"rate": "{value}"}}, "values": [0.1, 0.5],
                                           "refine": False})
    del raw["variants"]
    study = from_dict(raw, base_dir=factory_dir)
    rates = sorted(v.args.get("rate", 0.0) for v in study.variants)
    assert rates == [0.0, 0.1, 0.5]


def test_keys_of_factory_models_without_args_are_unchanged(factory_dir):
    raw = study_dict()
    raw["model"] = {"factory": "args_factory:build"}
    raw["variants"] = {"none": {}}
    (variant,) = from_dict(raw, base_dir=factory_dir).variants
    assert '"args"' not in variant.key


@pytest.mark.parametrize("change, match", [
    ({"model": {"layers": ["Dense(1, input_dim=2)"], "args": {"width": 3}}}, "model.args needs a factory model"),
    ({"model": {"layers": ["Dense(1, input_dim=2)"]}, "variants": {"none": {"args": {"rate": 0.1}}}},
     "variants.none.args needs a factory model"),
    ({"variants": {"none": {"args": {"not a name": 1}}}}, "not a Python argument name"),
    ({"variants": {"none": {"args": {"rate": {"x": 1}}}}}, "not a table"),
], ids=["model-args-with-layers", "variant-args-with-layers", "bad-name", "table-value"])
def test_args_errors_are_one_line(factory_dir, change, match):
    with pytest.raises(StudyError, match=match) as info:
        from_dict(study_dict(**change), base_dir=factory_dir)
    assert "\n" not in str(info.value)


def test_an_argument_the_factory_does_not_take_is_refused_before_training(factory_dir):
    study = from_dict(study_dict(variants={"none": {}, "bad": {"args": {"depth": 3}}}), base_dir=factory_dir)
    with pytest.raises(StudyError, match="unexpected keyword argument 'depth'"):
        reglab.study.prepare(study)
