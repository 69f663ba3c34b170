"""Wording shared by every message kdsearch prints: plurals and "did you mean" suggestions.
Imports nothing of the package (the bottom layer, beside :mod:`kdsearch.storage`)."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path


def plural(count: int | float, word: str, many: str | None = None) -> str:
    """``1 trial``, ``2 trials``, ``0 videos``; ``many`` for irregular plurals."""
    return f"{count:g} {word if count == 1 else many or word + 's'}"


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid name a misspelt ``name`` most likely meant, or None when none is close."""
    found = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'num_samples'?)"``, or "" when nothing is close."""
    match = closest(name, choices)
    return f" (did you mean {match!r}?)" if match else ""


def python_command() -> str:
    """The interpreter running kdsearch, as a user would type it from here: commands kdsearch
    prints (``<python> -m mlflow ui``, ``<python> -m kdsearch.best``) then run in the same
    environment, activated or not (``.venv/bin/python`` in the README's setup)."""
    path = Path(sys.executable)
    try:
        relative = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return str(relative) if len(relative.parts) > 1 else f"./{relative}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                 right: Iterable[int] = ()) -> list[str]:
    """Lines of a plain-text table, each column as wide as its widest cell; the columns at
    the indices in ``right`` (numbers) are right-aligned."""
    right = set(right)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(cell).rjust(w) if i in right else str(cell).ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in [header, *rows]]
