"""Times as people say them; no imports, so `reglab status` can use it without loading PyTorch."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """A time span as a person says it (progress lines, ``reglab status``).

    >>> duration(42), duration(250), duration(7380)
    ('42 s', '4 min', '2 h 3 min')
    """
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {round(seconds % 3600 / 60)} min"
