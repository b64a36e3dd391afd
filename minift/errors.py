"""The errors minift raises about what it is given, so that a caller can catch one thing.

    MiniftError          an argument, a file or a field is not what it should be; the message
     │                   names it, says what was expected and what came
     └ FileFormatError   a file minift reads is damaged, of the wrong kind, or holds a field of
        │                the wrong type or range: ``path`` and ``field`` say which
        └ MissingFileError   a file or folder that should be there is not

All are ValueErrors (bad input, not a failing machine), and a MissingFileError is also a
FileNotFoundError, so code written against either keeps working.
"""

from __future__ import annotations

__all__ = ["MiniftError", "FileFormatError", "MissingFileError"]


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
