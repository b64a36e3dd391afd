"""Files, the floor every save and load stands on: atomic writes, strict JSON, safetensors.

Everything minift writes goes through ``atomic_write_bytes``: a temporary file in the same
directory, fsync, then rename, so a crash or a full disk leaves the previous file or none, never
half of one. Everything it reads goes through ``read_text`` (``read_json`` and the vocabulary
reader build on it) and ``load_tensors``, and each JSON field through ``json_bool``/``json_int``/
``json_number``/``json_str``/``json_str_list``, so that whatever is wrong with a file (missing, a
folder, not UTF-8, not JSON, a field of the wrong type or range, a tensor damaged, of the wrong
dtype or shape, or holding NaN or ±inf) is a ``minift.errors.FileFormatError`` naming the file
and the field, never a TypeError from deep inside, and never a silently different model.

The safetensors format, the whole of it (``load_tensors`` checks all of this before it lets the
library parse a byte):

    bytes [0, 8)         N, the header's length, a little-endian u64
    bytes [8, 8 + N)     JSON header: {name: {"dtype": "F32", "shape": [d0, d1],
                                              "data_offsets": [begin, end]}, …,
                                       "__metadata__": {str: str}}       (metadata optional)
    bytes [8 + N, end)   the data: tensor ``name`` is data[begin:end], raw little-endian values,
                         end − begin = itemsize(dtype) · d0 · d1 · …, the tensors tiling the data
                         exactly (no gap, no overlap, nothing after the last)

Never pickle: a pickle file is a program that runs when loaded; a safetensors file is a table of
numbers. Every file minift writes also carries, in its metadata, a SHA-256 of its tensors
("minift_sha256") and, beside a JSON config, of that config ("minift_config_sha256"). Files
without them (Hugging Face's, PEFT's) are read without that check; a caller that knows minift
wrote a file says so (``require_digest=True``), so that a flipped bit in the key's name cannot
switch the check off.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import safetensors.numpy

from minift.errors import FileFormatError, MissingFileError

__all__ = [
    "DIGEST_KEY",
    "CONFIG_DIGEST_KEY",
    "atomic_write_bytes",
    "atomic_write_json",
    "read_text",
    "read_json",
    "check_folder",
    "json_bool",
    "json_int",
    "json_number",
    "json_str",
    "json_str_list",
    "save_tensors",
    "load_tensors",
    "check_tensor",
    "tensors_digest",
    "json_digest",
    "check_config_digest",
]

# safetensors' dtype codes and the NumPy types they hold; the codes NumPy cannot represent
# (BF16, the F8 family) are refused with a message rather than guessed at.
_NUMPY_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


# -- atomic writes ---------------------------------------------------------------------------


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of ``data``.

    The bytes go to a temporary file in the SAME directory (a rename is atomic only within one
    filesystem), are flushed and fsync'ed to the disk, and only then renamed onto ``path``. On any
    failure the temporary file is removed and the error re-raised. The parent directory must
    exist. An OSError (PermissionError, FileNotFoundError, a full disk …) is re-raised as the same
    OSError type with a message naming ``path``.
    """
    path = Path(path)
    directory = path.parent
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on the disk BEFORE the name points at them
        # mkstemp makes the file private (0600); give it what open() gives under the usual umask
        # 022 (reading the real umask means setting it, which races with other threads).
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
        tmp_name = None  # renamed: nothing left to clean up
    except BaseException as e:  # KeyboardInterrupt too: never leave a temporary file behind
        if tmp_name is not None:
            try:
                os.remove(tmp_name)
            except OSError:
                pass
        if isinstance(e, OSError):
            message = f"cannot write {path}: {e.strerror or e}"
            # OSError(errno, message) builds the matching subclass (PermissionError, …).
            raise (OSError(message) if e.errno is None else OSError(e.errno, message)) from e
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable on POSIX; a no-op where a directory cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # Windows: directories cannot be opened, and NTFS journals the rename anyway
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the file's bytes are already synced
    finally:
        os.close(fd)


def cache_dir() -> Path:
    """Where minift keeps what it can make again (the base model, the corpus's docstrings):
    $MINIFT_CACHE, else $XDG_CACHE_HOME/minift, else ~/.cache/minift."""
    if os.environ.get("MINIFT_CACHE"):
        return Path(os.environ["MINIFT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minift"


def atomic_write_json(path, obj) -> None:
    """Write ``obj`` as JSON (indent 2, keys in the order given, trailing newline), atomically.

    The text is built before the file is touched, so an object JSON cannot encode (a NumPy
    scalar, NaN) raises TypeError / ValueError and leaves ``path`` as it was.
    """
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_text(path, what: str) -> str:
    """The UTF-8 text of the file at ``path``, its line ends as they are; ``what`` names the
    file in errors ("vocabulary", …).

    MissingFileError when the file is not there (a dangling link included); FileFormatError when
    it is a folder, unreadable or not UTF-8.
    """
    path = Path(path)
    try:
        # bytes, then decoded: Path.read_text would turn a lone "\r" into a line end
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise MissingFileError(path, f"{what}: no such file") from None
    except IsADirectoryError:
        raise FileFormatError(path, f"{what}: a folder, expected a file") from None
    except UnicodeDecodeError as e:
        raise FileFormatError(path, f"{what} is not UTF-8 text ({e})") from None
    except OSError as e:  # no permission, a file where the path needs a folder, …
        raise FileFormatError(path, f"{what} cannot be read ({e.strerror or e})") from None


def read_json(path, what: str, *, expect: type = dict) -> dict | list:
    """Read a JSON object from ``path``; ``what`` names the file in errors ("config", …).

    MissingFileError when the file is not there (a dangling link included); FileFormatError when
    it is a folder, unreadable, not UTF-8, not JSON (a key given twice included), or not a JSON
    object (``expect=list``: not a JSON list, for the few files that are one, as
    sentence-transformers' modules.json).
    """
    path = Path(path)
    text = read_text(path, what)
    try:
        obj = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except ValueError as e:  # JSONDecodeError, and a key given twice
        raise FileFormatError(path, f"{what} is not valid JSON ({e})") from None
    if not isinstance(obj, expect):
        expected = "a JSON object" if expect is dict else f"a JSON {_json_type(expect())[2:]}"
        raise FileFormatError(path, f"{what} must be {expected}, got {_json_type(obj)}")
    return obj


def check_folder(path, what: str) -> Path:
    """``path`` as a Path if it is a folder; ``what`` says what it should hold, for the errors.

    MissingFileError when nothing is there (a dangling link included); FileFormatError when a
    file is there instead.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(path, f"no such folder ({what})")
    if not path.is_dir():
        raise FileFormatError(path, f"a file, expected a folder ({what})")
    return path


# -- JSON fields: each read with its type and range checked ----------------------------------
# ``default`` is what a missing field means (without one, a missing field is an error); with
# ``nullable`` a JSON null reads as None. A bool is never a number, nor a number a bool.

_REQUIRED = object()


def _json_type(value) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "an object"})
    return names.get(type(value), type(value).__name__)


def _got(value) -> str:
    """The value as JSON writes it, where short; its JSON type otherwise."""
    if isinstance(value, (str, int, float, bool, type(None))):
        text = json.dumps(value)
        if len(text) <= 60:
            return text
    return _json_type(value)


def _field(obj: dict, key: str, path, default, nullable: bool) -> tuple[bool, object]:
    """(True, the value) to check, or (False, what to return as it is)."""
    if key not in obj:
        if default is _REQUIRED:
            raise FileFormatError(path, "missing", field=key)
        return False, default
    if obj[key] is None and nullable:
        return False, None
    return True, obj[key]


def json_bool(obj: dict, key: str, path, *, default=_REQUIRED, nullable=False):
    """A JSON boolean: true or false, never "no", 0 or 1."""
    present, value = _field(obj, key, path, default, nullable)
    if present and not isinstance(value, bool):
        raise FileFormatError(path, f"expected true or false, got {_got(value)}", field=key)
    return value


def json_int(obj: dict, key: str, path, *, minimum=None, maximum=None, default=_REQUIRED,
             nullable=False):  # fmt: skip
    """A JSON integer (not 1.0, not "1"), within [minimum, maximum] where given."""
    present, value = _field(obj, key, path, default, nullable)
    if not present:
        return value
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        expected = _within("an integer", minimum, maximum)
        raise FileFormatError(path, f"expected {expected}, got {_got(value)}", field=key)
    return value


def json_number(obj: dict, key: str, path, *, minimum=None, maximum=None, below=None,
                default=_REQUIRED, nullable=False):  # fmt: skip
    """A finite JSON number in [minimum, maximum] (or [minimum, below) where ``below`` is given)."""
    present, value = _field(obj, key, path, default, nullable)
    if not present:
        return value
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum)
    ok = ok and (maximum is None or value <= maximum) and (below is None or value < below)
    if not ok:
        if below is None:
            expected = _within("a finite number", minimum, maximum)
        else:
            expected = (
                f"a number in [{minimum}, {below})"
                if minimum is not None
                else f"a number < {below}"
            )
        raise FileFormatError(path, f"expected {expected}, got {_got(value)}", field=key)
    return float(value)


def json_str(obj: dict, key: str, path, *, choices=None, default=_REQUIRED, nullable=False):
    """A JSON string, one of ``choices`` where given."""
    present, value = _field(obj, key, path, default, nullable)
    if present and (not isinstance(value, str) or (choices is not None and value not in choices)):
        expected = (
            "a string" if choices is None else "one of " + ", ".join(map(json.dumps, choices))
        )
        raise FileFormatError(path, f"expected {expected}, got {_got(value)}", field=key)
    return value


def json_str_list(obj: dict, key: str, path, *, default=_REQUIRED, nullable=False):
    """A JSON list of strings."""
    present, value = _field(obj, key, path, default, nullable)
    if present and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise FileFormatError(path, f"expected a list of strings, got {_got(value)}", field=key)
    return value


def _within(kind: str, minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"{kind} ≥ {minimum}"
    return kind if maximum is None else f"{kind} ≤ {maximum}"


# -- tensors: safetensors files --------------------------------------------------------------


def save_tensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
    """Write ``tensors`` (name -> array) and optional text ``metadata`` as one safetensors file.

    Arrays are stored C-contiguous and little-endian, whatever their layout in memory; the write
    is atomic (``atomic_write_bytes``).
    """
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(
                f"tensor name: expected a non-empty string but __metadata__, got {name!r}"
            )
        array = np.asarray(value, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
        if array.dtype.newbyteorder("=") not in _NUMPY_DTYPES.values():
            raise TypeError(f"{name}: safetensors cannot store dtype {array.dtype}")
        arrays[name] = array
    if metadata is not None:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(
                    f"metadata: keys and values must be strings, got {key!r}: {value!r}"
                )
    metadata = {**(metadata or {}), DIGEST_KEY: tensors_digest(arrays)}
    atomic_write_bytes(path, safetensors.numpy.save(arrays, metadata=metadata))


DIGEST_KEY = "minift_sha256"
CONFIG_DIGEST_KEY = "minift_config_sha256"


def tensors_digest(tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and little-endian bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        h.update(f"{name}|{little.dtype.str}|{array.shape}|".encode())
        h.update(np.ascontiguousarray(little).tobytes())
    return h.hexdigest()


def json_digest(obj) -> str:
    """SHA-256 of a JSON object's canonical text (sorted keys), as it reads back from disk."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def check_config_digest(metadata: dict[str, str], config: dict, config_path, weights_path) -> None:
    """The config must be the one the weights were saved with, when the weights say which. The
    checksum lives in the weights' header, so either file may be the damaged one: both named."""
    expected = metadata.get(CONFIG_DIGEST_KEY)
    if expected is not None and json_digest(config) != expected:
        raise FileFormatError(
            config_path,
            f"not the config {Path(weights_path).name} was saved with (the checksum "
            f"{weights_path} records differs): one of the two files was changed or corrupted",
        )


def load_tensors(
    path, *, require_digest: bool = False, allow_nonfinite: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: (name -> writable array, metadata). Never executes anything.

    MissingFileError names a missing file. A folder, or a file that is truncated, corrupted or
    not safetensors at all, is a FileFormatError ("<path>: not a readable safetensors file
    (<why>)"): the layout in this module's docstring is checked first, and whatever the
    safetensors library still raises becomes that error too. ``require_digest``: the caller
    knows minift wrote this file, so it must carry minift's checksum. A floating-point tensor
    holding NaN or ±inf is refused, naming it, unless the caller opts in (``allow_nonfinite``).
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(path, "no such file") from None
    except IsADirectoryError:
        raise _unreadable(path, "a folder, expected a file") from None
    except OSError as e:
        raise _unreadable(path, f"cannot be read: {e.strerror or e}") from None
    metadata = _check_layout(blob, path)
    try:
        tensors = safetensors.numpy.load(blob)
    except BaseException as e:
        # The library raises SafetensorError, and on some garbage other exceptions; a Rust panic
        # surfaces as pyo3's PanicException, which derives from BaseException, not Exception.
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise _unreadable(path, f"{type(e).__name__}: {e}") from None
    tensors = {k: v if v.flags.writeable else v.copy() for k, v in tensors.items()}
    expected = metadata.get(DIGEST_KEY)
    if expected is None and require_digest:
        raise _unreadable(path, f"no {DIGEST_KEY} in its header, though minift wrote it")
    if expected is not None and tensors_digest(tensors) != expected:
        raise _unreadable(path, "checksum mismatch: the numbers were changed or corrupted")
    if not allow_nonfinite:
        for name, array in tensors.items():
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                where = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
                raise FileFormatError(
                    path, f"holds {array[where]} at {where}: expected finite numbers", field=name
                )
    return tensors, metadata


def check_tensor(path, name: str, array: np.ndarray, shape: tuple, dtypes=None) -> None:
    """Tensor ``name`` of file ``path`` must have exactly ``shape`` (a shape that would broadcast
    is not enough) and, where ``dtypes`` is given, one of them; else a FileFormatError."""
    if tuple(array.shape) != tuple(shape):
        raise FileFormatError(
            path, f"expected shape {tuple(shape)}, got {tuple(array.shape)}", field=name
        )
    if dtypes is not None:
        allowed = [np.dtype(d) for d in (dtypes if isinstance(dtypes, (list, tuple)) else [dtypes])]
        if array.dtype not in allowed:
            names = " or ".join(str(d) for d in allowed)
            raise FileFormatError(path, f"expected dtype {names}, got {array.dtype}", field=name)


def _unreadable(path, why: str) -> FileFormatError:
    return FileFormatError(path, f"not a readable safetensors file ({why})")


def _check_layout(blob: bytes, path) -> dict[str, str]:
    """Check ``blob`` against the safetensors layout; return the header's metadata."""
    if len(blob) < 8:
        raise _unreadable(path, f"{len(blob)} bytes, fewer than the 8 of the header length")
    (header_len,) = struct.unpack("<Q", blob[:8])
    data_len = len(blob) - 8 - header_len
    if data_len < 0:
        raise _unreadable(path, f"header length {header_len} exceeds the {len(blob) - 8} bytes")
    try:
        header = json.loads(
            blob[8 : 8 + header_len].decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys
        )
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise _unreadable(path, f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise _unreadable(path, "header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _unreadable(path, "__metadata__ is not a map of strings to strings")

    spans = []  # (begin, end, name) of every tensor's bytes within the data
    for name, entry in header.items():
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise _unreadable(path, f"{name}: entry lacks dtype, shape or data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _NUMPY_DTYPES:
            raise _unreadable(path, f"{name}: dtype {dtype!r} is not one NumPy can hold")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _unreadable(path, f"{name}: shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
            raise _unreadable(path, f"{name}: data_offsets {offsets!r} is not [begin, end]")
        begin, end = offsets
        if not begin <= end <= data_len:
            raise _unreadable(path, f"{name}: data_offsets {offsets} outside the {data_len} bytes")
        expected = _NUMPY_DTYPES[dtype].itemsize * math.prod(shape)
        if end - begin != expected:
            raise _unreadable(
                path, f"{name}: {end - begin} data bytes, but {dtype} × {shape} needs {expected}"
            )
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise _unreadable(path, f"{name}: data starts at byte {begin}, expected {position}")
        position = end
    if position != data_len:
        raise _unreadable(path, f"the tensors cover {position} of the {data_len} data bytes")
    return metadata


def _refuse_duplicate_keys(pairs):
    # json.loads keeps the last of two equal keys; a header naming a tensor twice is corrupt.
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"key {duplicate!r} appears twice")
    return dict(pairs)


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
