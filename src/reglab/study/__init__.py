"""Studies: the seeds' workflow (compare, grid → refine, repeat) from a TOML file.

``reglab.study.dask`` (the Dask executor) and ``reglab.study.text`` (the console tables) load on
first use, so ``import reglab; reglab.study.dask.DaskExecutor`` works as the README writes it.
"""

import importlib as _importlib

from .keras import ModelError, build
from .checks import prepare
from .runner import StudyRun, from_store, run
from .summary import summarize
from .spec import Study, StudyError, Variant, from_dict, load

__all__ = ["ModelError", "Study", "StudyError", "StudyRun", "Variant", "build", "from_dict", "from_store", "load", "prepare", "run", "summarize"]

_LAZY = ("dask", "text", "snippet")


def __getattr__(name):
    if name in _LAZY:
        return _importlib.import_module(f".{name}", __name__)   # the import sets the attribute too
    raise AttributeError(f"module 'reglab.study' has no attribute {name!r}")
