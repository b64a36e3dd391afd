"""Where a run writes: checked before any work, made only when written, removed if a write fails;
and what a training run saves as it goes (``Checkpoints``).

Every check takes the name to give in its error (the command line's "--out"), so the person who
typed it reads which of their paths is wrong.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Checkpoints:
    """What a training run (``pretrain``, ``finetune``) saves as it goes, and whether it goes on
    from an earlier save: the command line's --checkpoint-dir … --log, checked by it first."""

    checkpoint_dir: Path | None = None  # None: no checkpoints
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end)
    resume: bool = False  # continue from the latest checkpoint in checkpoint_dir, bit for bit
    stop_at: int | None = None  # end at this step, as an interruption would
    log_path: Path | None = None  # one JSON line of metrics per step, appended


NO_CHECKPOINTS = Checkpoints()  # a run that saves nothing as it goes and starts afresh


def writable_dir(path, option: str) -> Path:
    """Prove that ``path`` can become a directory and be written, before any work; create nothing.

    Its parent must exist (as for mkdir without -p): a mistyped parent would otherwise only be
    found after the training it was meant to save. The directory itself is made only when the
    results are written (``removed_on_failure``), so a run that fails leaves no empty directory.
    """
    directory = Path(path)
    existing = directory  # the nearest ancestor that exists: where the directory would be made
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option}: cannot write to {directory}: {existing} is not a directory")
    if existing not in (directory, directory.parent):
        missing = directory.parent
        raise ValueError(
            f"{option}: cannot write to {directory}: its parent {missing} does not exist"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ValueError(f"{option}: cannot write to {directory}: {e.strerror or e}") from None
    return directory


@contextlib.contextmanager
def removed_on_failure(directory: Path):
    """Run the body that writes into ``directory``; if it fails, remove the directories it made.

    What existed before is left alone; a new directory (and any new parents) goes, so a failed
    write leaves nothing half-written.
    """
    first_new = None
    candidate = directory
    while not candidate.exists() and candidate.parent != candidate:
        first_new, candidate = candidate, candidate.parent
    try:
        yield directory
    except BaseException:
        if first_new is not None:
            shutil.rmtree(first_new, ignore_errors=True)
        raise


def writable_file(path, option: str) -> Path:
    """A file that can be created or appended to, in a directory that exists; creates nothing."""
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"{option}: {file} is a directory, expected a file")
    if not file.parent.is_dir():
        raise ValueError(f"{option}: cannot write {file}: {file.parent} is not a directory")
    writable_dir(str(file.parent), option)
    return file
