"""The population engine: many members of one architecture trained at once."""

from .engine import Population, PopulationResult, check_population, make_population, train_population
from .functional import ModulePopulation, NotBatchable

__all__ = ["ModulePopulation", "NotBatchable", "Population", "PopulationResult", "check_population", "make_population",
           "train_population"]
