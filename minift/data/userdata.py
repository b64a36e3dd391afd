"""A user's own examples, from a JSON Lines file: ``minift finetune --data FILE.jsonl``.

One JSON object per line, all of one kind:

    {"prompt": "seventy-one", "completion": "soixante et onze"}    generation
    {"text": "Return the sine of x.", "label": "math"}             classification

- generation: trained as every generation task is (minift.data.formats):
  <bos> prompt <sep> completion <eos>, the loss on the completion and <eos> only. The whole
  sequence must fit the model's block size: an example that does not is an error (cutting it
  would teach a wrong answer).
- classification: <bos> text <eos>, truncated on the right past the block size as the built-in
  tasks are. Labels are strings, or integers, never both; their ids are the labels in sorted
  order (``Task.label_names[id]``), and there must be at least two.
- Every character must be in the tokenizer's vocabulary (minift.data.standard_tokenizer: printable
  ASCII, newline, French accented letters): the error names the line, field and character.
- Blank lines are skipped; every other line that is not such an object is an error naming its
  line number (counted from 1), and the whole file is checked before anything is trained.

Splits: the examples are shuffled with ``split_seed`` and cut into test, validation and train
(a tenth each for test and validation, at least one example each), the same for the same file
and seed whatever the training seed, so runs with different seeds are scored on the same test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from minift.data.tasks import Example, Task
from minift.data.tokenizer import CharTokenizer

__all__ = ["KINDS", "load_jsonl_task"]

KINDS = {  # the keys of a line -> the kind of task
    ("completion", "prompt"): "generation",
    ("label", "text"): "classification",
}
MIN_EXAMPLES = 3  # one each for train, validation and test


def load_jsonl_task(
    path, tokenizer: CharTokenizer, block_size: int, split_seed: int = 0, name: str | None = None
) -> Task:
    """Read, check and split ``path``; a Task named ``name`` (default "data:<file name>").

    Raises ValueError naming the file, the line and what was wrong, for the first bad line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not UTF-8 text") from None
    kind, records = None, []  # records: (line number, first field, second field)
    first_line = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        line_kind = KINDS.get(tuple(sorted(obj)))
        if line_kind is None:
            raise ValueError(
                f"{where}: expected the keys prompt, completion (generation) or text, label "
                f"(classification), got {sorted(obj)}"
            )
        if kind is None:
            kind, first_line = line_kind, number
        elif line_kind != kind:
            raise ValueError(
                f"{where}: a {line_kind} example, but line {first_line} is a {kind} example; "
                "a file holds one kind"
            )
        if kind == "generation":
            records.append((number, _text(obj, "prompt", where, tokenizer),
                            _text(obj, "completion", where, tokenizer)))  # fmt: skip
            length = len(records[-1][1]) + len(records[-1][2]) + 3  # <bos> <sep> <eos>
            if length - 1 > block_size:  # the model reads all but the last token
                raise ValueError(
                    f"{where}: {length} tokens (<bos> prompt <sep> completion <eos>) do not "
                    f"fit the model's block size {block_size}: at most {block_size + 1}"
                )
        else:
            records.append((number, _text(obj, "text", where, tokenizer), _label(obj, where)))
    if not records:
        raise ValueError(f"{path}: no examples (the file is empty or blank)")
    if len(records) < MIN_EXAMPLES:
        raise ValueError(
            f"{path}: {len(records)} examples; at least {MIN_EXAMPLES} are needed (train, "
            "validation, test)"
        )
    label_names: tuple[str, ...] = ()
    if kind == "classification":
        label_names, records = _label_ids(path, records)
    examples = [Example(first, second) for _, first, second in records]
    rng = np.random.default_rng(split_seed)
    order = rng.permutation(len(examples))
    n_held = max(1, len(examples) // 10)
    test = [examples[i] for i in order[:n_held]]
    val = [examples[i] for i in order[n_held : 2 * n_held]]
    train = [examples[i] for i in order[2 * n_held :]]
    return Task(
        name=name or f"data:{path.name}",
        kind=kind,
        train=train,
        val=val,
        test=test,
        label_names=label_names,
        metrics=("accuracy",) if kind == "classification" else ("exact_match", "chrf"),
        description=f"the examples of {path}",
        info={
            "file": str(path),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "split_seed": split_seed,
            "sizes": {"train": len(train), "val": len(val), "test": len(test)},
        },
    )


def _text(obj: dict, key: str, where: str, tokenizer: CharTokenizer) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key}: expected a string, got {json.dumps(value)}")
    if not value:
        raise ValueError(f'{where}: {key}: expected a non-empty string, got ""')
    try:
        tokenizer.encode(value)
    except ValueError as e:  # "text: character 'x' (U+…) at position p is not in …"
        raise ValueError(f"{where}: {key}: {str(e).removeprefix('text: ')}") from None
    return value


def _label(obj: dict, where: str) -> str | int:
    value = obj["label"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(
            f"{where}: label: expected a string or an integer, got {json.dumps(value)}"
        )
    if value == "":
        raise ValueError(f'{where}: label: expected a non-empty string, got ""')
    return value


def _label_ids(path: Path, records):
    """Labels -> ids in sorted order; all strings or all integers, at least two of them."""
    first_number, first_label = records[0][0], records[0][2]
    for number, _, label in records:
        if isinstance(label, str) != isinstance(first_label, str):
            raise ValueError(
                f"{path}: line {number}: label: {json.dumps(label)} is "
                f"{'a string' if isinstance(label, str) else 'an integer'}, but line "
                f"{first_number}'s is {json.dumps(first_label)}; labels are all strings or all "
                "integers"
            )
    names = sorted({label for _, _, label in records})
    if len(names) < 2:
        raise ValueError(
            f"{path}: every example has the label {json.dumps(names[0])}; a classifier needs "
            "at least two labels"
        )
    ids = {label: i for i, label in enumerate(names)}
    return tuple(str(n) for n in names), [(n, t, ids[label]) for n, t, label in records]
