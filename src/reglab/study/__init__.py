"""Studies: the seeds' workflow (compare, grid → refine, repeat) from a TOML file."""

from .keras import ModelError, build
from .runner import StudyRun, from_store, prepare, run, summarize
from .spec import Study, StudyError, Variant, from_dict, load

__all__ = ["ModelError", "Study", "StudyError", "StudyRun", "Variant", "build", "from_dict", "from_store", "load", "prepare", "run", "summarize"]
