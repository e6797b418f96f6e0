"""Tiny studies for the report tests: trained once per test module into a temporary database."""

from __future__ import annotations

from reglab import study as st
from reglab.store import Store

EVIL = "<script>alert(1)</script>"
MLP = ["Dense(16, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]


def compare_study(name="tiny-compare", seeds=2, epochs=12):
    """moons, three variants: none, L2, and one whose name is an HTML injection attempt."""
    return {
        "name": name, "question": f"Does L2 help? {EVIL} & \"quotes\"", "seeds": seeds, "baseline": "none",
        "data": {"name": "moons"}, "model": {"layers": MLP}, "training": {"epochs": epochs},
        "variants": {"none": {}, "l2": {"layers": {"0": {"kernel_regularizer": "l2(0.01)"}}},
                     EVIL: {"layers": {"0": {"kernel_constraint": "unit_norm()"}}}},
    }


def grid_study(values, name, seeds=2, epochs=8, template="l2({value})", refine=False):
    return {
        "name": name, "question": "Which strength?", "protocol": "grid", "seeds": seeds,
        "data": {"name": "moons"}, "model": {"layers": MLP}, "training": {"epochs": epochs},
        "grid": {"variant": {"layers": {"0": {"kernel_regularizer": template}}}, "values": values, "refine": refine},
    }


def iris_study(name="tiny-iris", seeds=2, epochs=5):
    return {
        "name": name, "seeds": seeds, "data": {"name": "iris"},
        "model": {"layers": ["Dense(8, activation='relu')", "Dense(3, activation='softmax')"]},
        "training": {"epochs": epochs},
        "variants": {"none": {}, "dropout": {"insert": {"0": "Dropout(0.2)"}}},
    }


def run_all(db, *raws):
    """Run each study into ``db``; returns the runs by study name."""
    runs = {}
    with Store(db) as store:
        for raw in raws:
            runs[raw["name"]] = st.run(st.from_dict(raw), store)
    return runs


def study_toml(name="s", seeds=2, data='name = "moons"', training="epochs = 2", inputs=2,
               layers=None, variants="[variants.none]") -> str:
    """A small study file's text: ``data`` and ``training`` are the lines of their tables, ``layers``
    the model's Keras lines (default: an MLP on ``inputs`` features with one sigmoid output)."""
    layers = layers or [f"Dense(8, input_dim={inputs}, activation='relu')", "Dense(1, activation='sigmoid')"]
    lines = ", ".join('"' + line.replace('"', '\\"') + '"' for line in layers)
    return (f'name = "{name}"\nseeds = {seeds}\n[data]\n{data}\n[training]\n{training}\n'
            f"[model]\nlayers = [{lines}]\n{variants}\n")


# none vs L2 on moons, one population; the text keeps an {epochs} placeholder for str.format
_NONE_VS_L2 = """\
name = "NAME"
seeds = SEEDS

[data]
name = "moons"

[model]
layers = ["Dense(8, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]

[training]
epochs = {epochs}

[variants.none]

[variants.l2]
layers = {{ 0 = {{ kernel_regularizer = "l2(0.01)" }} }}
"""


def none_vs_l2_study(name: str, seeds: int) -> str:
    """The study text (``.format(epochs=...)`` still to apply) of moons with no regularization and L2."""
    return _NONE_VS_L2.replace("NAME", name).replace("SEEDS", str(seeds))
