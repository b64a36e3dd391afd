"""Training checkpoints: what a run saves so that it can continue EXACTLY, and how a resume
proves a checkpoint whole before it changes anything.

A checkpoint directory (``TrainConfig``'s ``checkpoint_dir``) holds:

    step-0000042/model.safetensors       every weight (minift.files' format, with its checksum)
    step-0000042/optimizer.safetensors   the optimizer's state arrays ("exp_avg/<param>" …)
    step-0000042/hooks.safetensors       the hooks' state arrays ("<hook index>/<name>": AdaLoRA's
                                         importance averages …; empty for most methods)
    step-0000042/trainer.json            step, train_config, optimizer (hyper-parameters, step
                                         counts), scheduler, data_rng, dropout_rngs, trainable,
                                         hooks (each hook's JSON state), and the caller's
                                         extra_state
    step-0000042/manifest.json           {"sha256": {file: SHA-256 of its bytes}} for the 4 above
    latest.json                          {"checkpoint": "step-0000042",
                                          "manifest_sha256": SHA-256 of that manifest's bytes}

Saving (``save_checkpoint``) writes a step directory under a temporary name and renames it into
place only when complete (the manifest last), then replaces ``latest.json`` atomically; a kill at
any moment leaves the previous checkpoint intact, and what a killed save leaves behind is removed
by the next one.

Loading (``load_checkpoint``) checks the chain latest.json → manifest.json → every file's bytes
BEFORE it parses anything, then every field of trainer.json for its type, every tensor for its
dtype, shape and finiteness, and that the checkpoint fits the Trainer. Whatever is wrong is a
``minift.errors.FileFormatError`` naming the file (and the field or tensor), never a crash and
never a resume that silently differs, and a failed load changes nothing. Where latest.json is
missing or names a missing step, the newest step directory that verifies is taken, with a
warning.

The functions take the ``minift.train.Trainer`` whose state they save or restore; the loop itself
lives in minift/train.py, which this module does not import.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from minift.errors import FileFormatError, MiniftError, MissingFileError
from minift.files import atomic_write_json, check_tensor, load_tensors, read_json, save_tensors

__all__ = [
    "CHECKPOINT_FILES",
    "MANIFEST",
    "LATEST",
    "TRAINER_FIELDS",
    "save_checkpoint",
    "load_checkpoint",
    "has_checkpoint",
    "read_checkpoint_state",
]

# A training checkpoint: a step directory holding these files, each verified by MANIFEST, which
# latest.json verifies in turn.
CHECKPOINT_FILES = (
    "model.safetensors",
    "optimizer.safetensors",
    "hooks.safetensors",
    "trainer.json",
)
MANIFEST = "manifest.json"
LATEST = "latest.json"
_STEP_DIR = re.compile(r"step-[0-9]{7}")
_SET_ASIDE = ".set-aside"  # prefix of a step directory that a newer save of its step replaces
_SHA256 = re.compile(r"[0-9a-f]{64}")
# trainer.json's own fields; a Trainer's extra_state may not reuse them
TRAINER_FIELDS = (
    "step",
    "train_config",
    "optimizer",
    "scheduler",
    "data_rng",
    "dropout_rngs",
    "trainable",
    "hooks",
)


# -- writing a checkpoint: a complete one on disk at every instant -----------------------------


def save_checkpoint(trainer) -> Path:
    """Write step-N/ in a temporary directory, rename it, then point latest.json at it.

    The order keeps a complete, verified checkpoint on disk at every instant, whatever
    moment a kill strikes: the new step directory is complete before it gets its name; a
    step directory of the same name from before is set aside, not deleted, until latest.json
    names its replacement; older steps go last. What a killed save leaves behind (a
    temporary directory or file, a set-aside step) is removed by the next save.
    """
    if trainer.checkpoint_dir is None:
        raise MiniftError("checkpoint_dir: not set for this Trainer")
    root = trainer.checkpoint_dir
    root.mkdir(parents=True, exist_ok=True)
    _remove_litter(root)
    name = f"step-{trainer.step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        save_tensors(tmp / "model.safetensors", trainer.model.state_dict())
        opt_tensors, opt_meta = trainer.optimizer.state_dict()
        save_tensors(tmp / "optimizer.safetensors", opt_tensors)
        hook_states = [hook.state_dict() for hook in trainer.hooks]
        save_tensors(
            tmp / "hooks.safetensors",
            {f"{i}/{k}": v for i, (arrays, _) in enumerate(hook_states) for k, v in arrays.items()},
        )
        atomic_write_json(
            tmp / "trainer.json",
            {
                "step": trainer.step,
                "train_config": asdict(trainer.config),
                "optimizer": opt_meta,
                "scheduler": trainer.scheduler.state_dict(),
                "data_rng": trainer.data_rng.bit_generator.state,
                "dropout_rngs": [g.bit_generator.state for g in trainer.dropout_generators()],
                "trainable": sorted(
                    n for n, p in trainer.model.named_parameters().items() if p.trainable
                ),
                "hooks": [meta for _, meta in hook_states],
                **trainer.extra_state,
            },
        )
        # Last, and of the bytes as they landed on the disk: the manifest vouches for them.
        digests = {f: _sha256(tmp / f) for f in CHECKPOINT_FILES}
        atomic_write_json(tmp / MANIFEST, {"sha256": digests})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = root / name
    set_aside = None
    if final.exists():  # this step saved before (a resumed run passing it again)
        set_aside = root / f"{_SET_ASIDE}{tmp.name}"
        os.rename(final, set_aside)
    os.rename(tmp, final)
    manifest_sha256 = _sha256(final / MANIFEST)
    atomic_write_json(root / LATEST, {"checkpoint": name, "manifest_sha256": manifest_sha256})
    trainer.saved_step = trainer.step
    if set_aside is not None:
        shutil.rmtree(set_aside, ignore_errors=True)
    for old in sorted(root.glob("step-*"))[:-2]:  # keep the last two
        shutil.rmtree(old, ignore_errors=True)
    return final


# -- loading a checkpoint: every check before the first change -------------------------------


def load_checkpoint(trainer, path: str | os.PathLike | None = None) -> None:
    """Restore weights, optimizer, scheduler, step and RNG states; strict, all-or-nothing.

    ``path`` is a step directory; by default the one latest.json names. Everything is checked
    before the first change: the checksums (latest.json → manifest.json → each file's bytes),
    the type of every field of trainer.json, and that the checkpoint fits this Trainer (the
    same trainable parameters, thread count and dropout RNGs), every tensor's dtype, shape and
    finiteness. Any failure is a FileFormatError naming the file (and the field or tensor), and
    leaves the model, optimizer and Trainer as they were.
    """
    manifest_sha256 = None
    if path is None:
        if trainer.checkpoint_dir is None:
            raise MiniftError("checkpoint_dir: not set, and no checkpoint path given")
        path, manifest_sha256 = _latest_checkpoint(trainer.checkpoint_dir)
    path = Path(path)
    trainer_json = path / "trainer.json"
    state = _trainer_state(_verified_trainer_json(path, manifest_sha256), trainer_json)

    trainable = sorted(n for n, p in trainer.model.named_parameters().items() if p.trainable)
    if state["trainable"] != trainable:
        raise FileFormatError(
            path,
            f"the checkpoint trains other parameters than this model (checkpoint "
            f"{len(state['trainable'])}, model {len(trainable)}): was it made with another "
            "method or options?",
        )
    saved_threads = state["train_config"]["threads"]
    if saved_threads != trainer.config.threads:
        raise FileFormatError(
            path,
            f"saved with threads={saved_threads}, resumed with threads={trainer.config.threads}; "
            "each thread's dropout draws its own masks, so an exact resume needs the same number",
        )
    generators = trainer.dropout_generators()
    if len(state["dropout_rngs"]) != len(generators):
        raise FileFormatError(
            trainer_json,
            f"expected {len(generators)} states (one per dropout RNG of this model), got "
            f"{len(state['dropout_rngs'])}",
            field='"dropout_rngs"',
        )
    data_rng = _checked_rng_state(trainer.data_rng, state["data_rng"], trainer_json, '"data_rng"')
    dropout_rngs = [
        _checked_rng_state(g, saved, trainer_json, f'"dropout_rngs"[{i}]')
        for i, (g, saved) in enumerate(zip(generators, state["dropout_rngs"], strict=True))
    ]
    if len(state["hooks"]) != len(trainer.hooks):
        raise FileFormatError(
            trainer_json,
            f"expected the state of {len(trainer.hooks)} hooks "
            f"({[type(h).__name__ for h in trainer.hooks]}), got {len(state['hooks'])}",
            field='"hooks"',
        )
    # minift wrote every one of these files: each must carry its checksum, and hold only finite
    # numbers (training stops before a NaN reaches the weights, so a NaN here is damage)
    weights, _ = load_tensors(path / "model.safetensors", require_digest=True)
    _check_model_tensors(trainer.model, weights, path / "model.safetensors")
    opt_tensors, _ = load_tensors(path / "optimizer.safetensors", require_digest=True)
    hook_tensors = _split_hook_tensors(
        load_tensors(path / "hooks.safetensors", require_digest=True)[0], len(trainer.hooks), path
    )

    model_before = trainer.model.state_dict()
    opt_before = trainer.optimizer.state_dict()
    scheduler_before = trainer.scheduler.state_dict()
    hooks_before = [hook.state_dict() for hook in trainer.hooks]
    where = path / "model.safetensors"
    try:
        trainer.model.load_state_dict(weights)
        where = f'{path / "optimizer.safetensors"} with {trainer_json}\'s "optimizer"'
        trainer.optimizer.load_state_dict(opt_tensors, state["optimizer"])
        where = f'{trainer_json}: "scheduler"'
        trainer.scheduler.load_state_dict(state["scheduler"])
        for i, hook in enumerate(trainer.hooks):
            where = f'{path / "hooks.safetensors"} with {trainer_json}\'s "hooks"[{i}]'
            hook.load_state_dict(hook_tensors[i], state["hooks"][i])
    except (ValueError, KeyError, TypeError) as e:
        trainer.model.load_state_dict(model_before)  # all or nothing
        trainer.optimizer.load_state_dict(*opt_before)
        trainer.scheduler.load_state_dict(scheduler_before)
        for hook, before in zip(trainer.hooks, hooks_before, strict=True):
            hook.load_state_dict(*before)
        raise FileFormatError(where, str(e)) from None
    # checked on scratch generators above, so these cannot fail half-way
    trainer.data_rng.bit_generator.state = data_rng
    for g, saved in zip(generators, dropout_rngs, strict=True):
        g.bit_generator.state = saved
    trainer.step = state["step"]
    if (
        trainer.checkpoint_dir is not None
        and path.parent.resolve() == trainer.checkpoint_dir.resolve()
    ):
        trainer.saved_step = trainer.step


# -- reading a checkpoint: every check before the first change ---------------------------------


def has_checkpoint(checkpoint_dir: str | os.PathLike) -> bool:
    """Whether ``checkpoint_dir`` holds a checkpoint to resume (or the remains of one)."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return False
    return (root / LATEST).exists() or any(_STEP_DIR.fullmatch(p.name) for p in root.glob("step-*"))


def read_checkpoint_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """The trainer.json of the latest checkpoint in ``checkpoint_dir``, verified as
    ``Trainer.load_checkpoint`` verifies it (latest.json → manifest.json → every file's bytes →
    every field's type), without building a model: what a caller checks before it loads one.
    MissingFileError (a FileNotFoundError) when there is no checkpoint yet; FileFormatError,
    naming the file, when one is damaged."""
    path, manifest_sha256 = _latest_checkpoint(Path(checkpoint_dir))
    return _trainer_state(_verified_trainer_json(path, manifest_sha256), path / "trainer.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_bytes(file: Path, missing: str) -> bytes:
    """A checkpoint file's bytes; ``missing`` says what its absence means."""
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(file, missing) from None
    except IsADirectoryError:
        raise FileFormatError(file, "a folder, expected a file") from None
    except OSError as e:  # no permission, a file where the path needs a folder, …
        raise FileFormatError(file, f"cannot be read ({e.strerror or e})") from None


def _latest_checkpoint(root: Path) -> tuple[Path, str | None]:
    """The step directory latest.json names, and the SHA-256 it records of that manifest.

    Where latest.json names a step that a killed save set aside, the set-aside copy is taken,
    checked against latest.json's digest. Where latest.json is missing (a run killed before its
    first latest.json) or names a step directory that is not there, the newest step directory
    that verifies completely is taken instead, with a warning saying so; its manifest is then
    checked against the files alone (None). A latest.json that is damaged otherwise is refused.
    """
    if root.exists() and not root.is_dir():
        raise FileFormatError(root, "a file, expected a checkpoint folder")
    latest_path = root / LATEST
    if not latest_path.exists() and not latest_path.is_symlink():
        return _newest_complete_step(root, f"{latest_path} is missing")
    latest = read_json(latest_path, "latest checkpoint")
    name = latest.get("checkpoint")
    if not (isinstance(name, str) and _STEP_DIR.fullmatch(name)):
        raise FileFormatError(
            latest_path,
            f'expected a step directory such as "step-0000042", got {_got(latest, "checkpoint")}',
            field='"checkpoint"',
        )
    digest = latest.get("manifest_sha256")
    if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
        raise FileFormatError(
            latest_path,
            f"expected 64 lowercase hex digits, got {_got(latest, 'manifest_sha256')} "
            "(checkpoints saved before minift verified them have none: train again without "
            "resume)",
            field='"manifest_sha256"',
        )
    path = root / name
    if not path.exists():
        # A save killed between setting the old step aside and renaming its replacement in
        # leaves the very checkpoint latest.json vouches for under the set-aside name.
        for set_aside in sorted(root.glob(f"{_SET_ASIDE}.{name}-*")):
            warnings.warn(
                f"{latest_path} names {name}, which a killed save set aside: resuming from "
                f"{set_aside.name}",
                stacklevel=3,
            )
            return set_aside, digest
        return _newest_complete_step(root, f"{latest_path} names {name}, which is not in {root}")
    if not path.is_dir():
        raise FileFormatError(latest_path, f"points to {name}, which is not a directory in {root}")
    return path, digest


def _newest_complete_step(root: Path, why: str) -> tuple[Path, None]:
    """The newest step directory of ``root`` whose manifest and files verify (see above)."""
    steps = sorted((p for p in root.glob("step-*") if _STEP_DIR.fullmatch(p.name)), reverse=True)
    if not steps:
        raise MissingFileError(root, "no training checkpoint (no latest.json, no step directory)")
    problems = []
    for path in steps:
        try:
            _trainer_state(_verified_trainer_json(path, None), path / "trainer.json")
        except (ValueError, OSError) as e:
            problems.append(f"{path.name}: {e}")
            continue
        warnings.warn(
            f"{why}: resuming from {path.name}, the newest complete checkpoint", stacklevel=5
        )
        return path, None
    raise FileFormatError(
        root,
        f"{why}, and no step directory verifies ({'; '.join(problems)}): no checkpoint to resume "
        f"from; delete {root} (or choose another checkpoint directory) to train from the start",
    )


def _remove_litter(root: Path) -> None:
    """What a killed save leaves: temporary step directories and files, set-aside steps."""
    for entry in root.iterdir():
        litter = entry.name.startswith((".step-", _SET_ASIDE + ".step-")) or (
            entry.name.startswith(f".{LATEST}.") and entry.name.endswith(".tmp")
        )
        if not litter:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _verified_trainer_json(path: Path, manifest_sha256: str | None) -> bytes:
    """Check manifest.json (against ``manifest_sha256`` when given) and every file it lists;
    return trainer.json's bytes, the very bytes whose digest was checked."""
    if not path.exists():
        raise MissingFileError(path, "training checkpoint: no such directory")
    if not path.is_dir():
        raise FileFormatError(path, "a file, expected a training checkpoint's step folder")
    manifest_path = path / MANIFEST
    raw = _read_bytes(
        manifest_path,
        "missing; not a complete training checkpoint (or one saved before minift verified "
        "them: train again without resume)",
    )
    if manifest_sha256 is not None and hashlib.sha256(raw).hexdigest() != manifest_sha256:
        raise FileFormatError(
            manifest_path,
            f"its SHA-256 differs from the one {path.parent / LATEST} records: one of the two "
            "was changed or corrupted",
        )
    manifest = _json_object(raw, manifest_path, "checkpoint manifest")
    digests = manifest.get("sha256")
    if not (
        isinstance(digests, dict)
        and sorted(digests) == sorted(CHECKPOINT_FILES)
        and all(isinstance(d, str) and _SHA256.fullmatch(d) for d in digests.values())
    ):
        raise FileFormatError(
            manifest_path,
            f"expected {{file: 64 lowercase hex digits}} for exactly {list(CHECKPOINT_FILES)}, "
            f"got {_got(manifest, 'sha256')}",
            field='"sha256"',
        )
    trainer_bytes = b""
    for name in CHECKPOINT_FILES:
        file = path / name
        data = _read_bytes(file, f"missing, though {MANIFEST} lists it")
        if hashlib.sha256(data).hexdigest() != digests[name]:
            raise FileFormatError(
                file,
                f"its SHA-256 differs from the one in {MANIFEST}: the file was changed or "
                "corrupted",
            )
        if name == "trainer.json":
            trainer_bytes = data
    return trainer_bytes


def _json_object(data: bytes, path: Path, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError both are
        raise FileFormatError(path, f"{what} is not UTF-8 JSON ({e})") from None
    if not isinstance(obj, dict):
        raise FileFormatError(path, f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _trainer_state(data: bytes, path: Path) -> dict[str, Any]:
    """trainer.json's object, every field the loader reads checked for its type and range."""
    state = _json_object(data, path, "trainer state")

    def check(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise FileFormatError(
                path, f"expected {expected}, got {_got(state, field)}", field=f'"{field}"'
            )

    step = state.get("step")
    check(_is_count(step), "step", "an integer >= 0")
    train_config = state.get("train_config")
    check(
        isinstance(train_config, dict) and _is_count(train_config.get("threads"), minimum=1),
        "train_config",
        'an object whose "threads" is a positive integer',
    )
    optimizer = state.get("optimizer")
    groups = optimizer.get("groups") if isinstance(optimizer, dict) else None
    check(
        isinstance(optimizer, dict)
        and isinstance(optimizer.get("type"), str)
        and isinstance(groups, list)
        and all(isinstance(g, dict) and _is_list_of(g.get("params"), str) for g in groups)
        and isinstance(optimizer.get("step_counts"), dict),
        "optimizer",
        'an object with "type", "groups" (objects with a "params" list) and "step_counts"',
    )
    scheduler = state.get("scheduler")
    check(
        isinstance(scheduler, dict)
        and _is_count(scheduler.get("t"))
        and scheduler.get("t") == step
        and _is_list_of(scheduler.get("base_lrs"), (int, float)),
        "scheduler",
        f'{{"t": {step} (the step), "base_lrs": [a number per param group]}}',
    )
    check(isinstance(state.get("data_rng"), dict), "data_rng", "a random generator's state")
    check(
        _is_list_of(state.get("dropout_rngs"), dict),
        "dropout_rngs",
        "a list of random generators' states",
    )
    check(_is_list_of(state.get("trainable"), str), "trainable", "a list of parameter names")
    check(_is_list_of(state.get("hooks"), dict), "hooks", "a list of the hooks' states (objects)")
    return state


def _check_model_tensors(model, tensors: dict[str, np.ndarray], file: Path) -> None:
    """Each weight the model has must come in its exact shape and dtype: ``load_state_dict``
    would cast another float dtype silently, and a checkpoint of this model holds its own."""
    for name, param in model.named_parameters().items():
        if name in tensors:
            check_tensor(file, name, tensors[name], param.shape, param.value.dtype)


def _split_hook_tensors(tensors: dict[str, np.ndarray], n_hooks: int, path: Path) -> list[dict]:
    """hooks.safetensors' "<i>/<name>" arrays, as one {name: array} per hook."""
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n_hooks)]
    for key, value in tensors.items():
        index, _, name = key.partition("/")
        if not (index.isdigit() and int(index) < n_hooks and name):
            raise FileFormatError(
                path / "hooks.safetensors",
                f'{key!r} is not "<hook index>/<name>" for one of this Trainer\'s {n_hooks} hooks',
            )
        out[int(index)][name] = value
    return out


def _checked_rng_state(generator: np.random.Generator, saved: Any, path: Path, field: str) -> dict:
    """``saved``, once it has proved a valid state for ``generator``'s kind: set on a scratch
    generator of that kind and read back unchanged (NumPy's setter coerces some values)."""
    current = generator.bit_generator.state
    kind = current.get("bit_generator")
    if _structure(saved) != _structure(current):
        raise FileFormatError(
            path, f"expected a {kind} state like {_short(current)}, got {_short(saved)}", field
        )
    scratch = type(generator.bit_generator)()
    try:
        scratch.state = saved
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        raise FileFormatError(path, f"not a valid {kind} state ({e})", field) from None
    if scratch.state != saved:
        raise FileFormatError(path, f"not a valid {kind} state (it reads back otherwise)", field)
    return saved


def _structure(obj: Any) -> Any:
    """The keys and leaf types of a JSON-like value: what two RNG states of one kind share."""
    if isinstance(obj, dict):
        return {k: _structure(v) for k, v in obj.items()}
    return type(obj).__name__


def _is_count(x: Any, minimum: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= minimum


def _is_list_of(x: Any, types: type | tuple[type, ...]) -> bool:
    return isinstance(x, list) and all(isinstance(v, types) and not isinstance(v, bool) for v in x)


def _got(obj: dict, field: str) -> str:
    return _short(obj[field]) if field in obj else "nothing (no such field)"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
