"""reglab: cure overfitting in PyTorch models with Keras-grade regularization and fast, honest studies."""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# OpenMP (PyTorch's and numba's threads) reads this once, when PyTorch loads: sleep at barriers
# instead of spinning, so waiting threads leave a shared CPU to whoever holds it (reglab.threads).
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import constraints, optim, penalties, presets, tasks, threads
from .attach import activity_penalty, apply_constraints, penalty, regularize, weight_penalty
from .callbacks import Callback, EarlyStopping, PenaltySchedule
from .constraints import MaxNorm, MinMaxNorm, NonNeg, UnitNorm, max_norm, min_max_norm, non_neg, unit_norm
from .layers import ChannelsFirst, GaussianDropout, GaussianNoise, InputNoise, RNNOutput, SequenceDropout
from .penalties import L1, L1L2, L2, Orthogonal, l1, l1_l2, l2, orthogonal
from .population import PopulationResult, train_population
from .presets import initialize
from .training import History, evaluate, fit

__all__ = [
    "L1", "L2", "L1L2", "Orthogonal", "l1", "l2", "l1_l2", "orthogonal",
    "MaxNorm", "UnitNorm", "MinMaxNorm", "NonNeg", "max_norm", "unit_norm", "min_max_norm", "non_neg",
    "regularize", "penalty", "weight_penalty", "activity_penalty", "apply_constraints",
    "GaussianNoise", "GaussianDropout", "InputNoise", "RNNOutput", "SequenceDropout", "ChannelsFirst",
    "fit", "evaluate", "History", "train_population", "PopulationResult", "initialize", "Callback", "EarlyStopping", "PenaltySchedule",
    "penalties", "constraints", "optim", "presets", "tasks", "threads",
]
