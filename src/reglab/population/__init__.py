"""The population engine: many members of one architecture trained at once."""

from .engine import Population, PopulationResult, train_population

__all__ = ["Population", "PopulationResult", "train_population"]
