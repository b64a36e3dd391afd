"""The errors minift raises about what it is given, so that a caller can catch one thing.

    MiniftError          an argument, a file or a field is not what it should be; the message
     │                   names it, says what was expected and what came
     └ FileFormatError   a file minift reads is damaged, of the wrong kind, or holds a field of
        │                the wrong type or range: ``path`` and ``field`` say which
        └ MissingFileError   a file or folder that should be there is not

All are ValueErrors (bad input, not a failing machine), and a MissingFileError is also a
FileNotFoundError, so code written against either keeps working. ``check_int`` is the one check
of a count or size (steps, ranks, threads), with the message every such error has.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MiniftError", "FileFormatError", "MissingFileError", "check_int"]


class MiniftError(ValueError):
    """Bad input: the message names the argument, file or field, what was expected and what came."""


class FileFormatError(MiniftError):
    """A file minift reads is not what it should be.

    ``path`` is the file (or folder), ``field`` the JSON field or tensor name where the fault is
    (None when it is the file as a whole). The message starts with both: ``path: field: ...``.
    """

    def __init__(self, path, message: str, field: str | None = None):
        self.path = str(path)
        self.field = field
        where = self.path if field is None else f"{self.path}: {field}"
        super().__init__(f"{where}: {message}")


class MissingFileError(FileFormatError, FileNotFoundError):
    """A file or folder that should be there is not (a dangling link counts as not there)."""


def check_int(name: str, value, minimum: int = 1, *, optional: bool = False, what: str = ""):
    """``value`` as an ``int``, if it is an integer ≥ ``minimum`` (or None, when ``optional``);
    else a MiniftError: ``name: expected a positive integer, got 2.5``.

    One check for every count and size minift is given (steps, ranks, threads, shapes): a Python
    or NumPy integer passes, a bool does not (``True`` is 1 to Python, never a count here), nor
    does a float that happens to be whole. ``what`` words the expectation where the default
    ("a positive integer", "an integer >= 0") says too little ("a positive integer rank").
    """
    if value is None and optional:
        return None
    is_integer = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not is_integer or value < minimum:
        wanted = what or ("a positive integer" if minimum == 1 else f"an integer >= {minimum}")
        raise MiniftError(
            f"{name}: expected {wanted}{' or None' if optional else ''}, got {value!r}"
        )
    return int(value)
