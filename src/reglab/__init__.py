"""reglab: cure overfitting in PyTorch models with Keras-grade regularization and fast, honest studies.

The public names load on first use (PEP 562), so ``import reglab`` is cheap and commands that need
no training (``reglab status``, ``list``, ``export``) never load PyTorch.
"""

__version__ = "0.1.0"

import importlib as _importlib
import os as _os
import sys as _sys

# OpenMP (PyTorch's and numba's threads) reads this once, when PyTorch loads: sleep at barriers
# instead of spinning, so waiting threads leave a shared CPU to whoever holds it (reglab.threads).
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(["L1", "L2", "L1L2", "Orthogonal", "l1", "l2", "l1_l2", "orthogonal"], "penalties"),
    **dict.fromkeys(["MaxNorm", "UnitNorm", "MinMaxNorm", "NonNeg", "max_norm", "unit_norm", "min_max_norm",
                     "non_neg"], "constraints"),
    **dict.fromkeys(["regularize", "penalty", "weight_penalty", "activity_penalty", "apply_constraints"], "attach"),
    **dict.fromkeys(["GaussianNoise", "GaussianDropout", "InputNoise", "RNNOutput", "SequenceDropout",
                     "ChannelsFirst", "KerasBatchNorm", "KerasLayerNorm"], "layers"),
    **dict.fromkeys(["RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom", "RandomCrop", "RandomTimeShift",
                     "RandomTimeMask", "DropPath", "drop_path_rates", "AlphaDropout"], "augment"),
    **dict.fromkeys(["fit", "evaluate", "History"], "training"),
    **dict.fromkeys(["predict", "predict_proba"], "predictions"),
    **dict.fromkeys(["train_population", "PopulationResult"], "population"),
    **dict.fromkeys(["Callback", "EarlyStopping", "PenaltySchedule"], "callbacks"),
    **dict.fromkeys(["ExponentialDecay", "StepDecay", "CosineDecay", "ReduceLROnPlateau"], "schedules"),
    "Mixup": "mixup",
    **dict.fromkeys(["EMA", "SWA"], "averaging"),
    "initialize": "presets",
    "Study": "notebook",
}
_SUBMODULES = ("penalties", "constraints", "optim", "presets", "tasks", "threads", "attach", "callbacks", "layers",
               "training", "predictions", "population", "data", "diagnose", "stats", "store", "study", "report",
               "notebook", "cli", "schedules", "augment", "mixup", "averaging")

__all__ = [*_EXPORTS, "penalties", "constraints", "optim", "presets", "tasks", "threads"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'reglab' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
