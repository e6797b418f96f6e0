"""A grid's points and their variant names: shared by the study spec and ``reglab status``, which
reads them from a stored spec without loading PyTorch (this module imports nothing heavy)."""

DEFAULT_DECADES = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]


def product(grid_values: dict) -> list[dict]:
    """Every point of the grid: ``{"a": [1, 2], "b": [3]}`` -> ``[{"a": 1, "b": 3}, {"a": 2, "b": 3}]``.

    >>> product({"a": [1, 2], "b": [3]})
    [{'a': 1, 'b': 3}, {'a': 2, 'b': 3}]
    """
    points = [{}]
    for key, vals in grid_values.items():
        points = [{**p, key: v} for p in points for v in vals]
    return points


def point_name(point: dict) -> str:
    """A grid point's variant name: ``"0.001"``, or ``"a=0.1, b=0.01"`` for several strengths.

    >>> point_name({"value": 0.001}), point_name({"a": 0.1, "b": 0.01})
    ('0.001', 'a=0.1, b=0.01')
    """
    return ", ".join(f"{k}={v:g}" for k, v in point.items()) if len(point) > 1 else f"{next(iter(point.values())):g}"
