"""A user's examples from a JSON Lines file: read, checked line by line, split by a seed."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.data import load_jsonl_task, standard_tokenizer

TOK = standard_tokenizer()


def write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def gen(prompt, completion):
    return json.dumps({"prompt": prompt, "completion": completion})


def cls(text, label):
    return json.dumps({"text": text, "label": label})


GOOD_GEN = [gen(f"{i} + 1", str(i + 1)) for i in range(20)]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "no examples (the file is empty or blank)"),
        (["", "   "], "no examples (the file is empty or blank)"),
        ([*GOOD_GEN[:2], "{not json"], "line 3: not JSON (Expecting property name"),
        ([GOOD_GEN[0], "[1, 2]"], "line 2: expected a JSON object, got list"),
        (['"a string"'], "line 1: expected a JSON object, got str"),
        ([json.dumps({"prompt": "a"})], "line 1: expected the keys prompt, completion"),
        (
            [GOOD_GEN[0], json.dumps({"prompt": "a", "completion": "b", "id": 3})],
            "line 2: expected the keys prompt, completion (generation) or text, label "
            "(classification), got ['completion', 'id', 'prompt']",
        ),
        (
            [json.dumps({"prompt": 7, "completion": "b"})],
            "line 1: prompt: expected a string, got 7",
        ),
        ([json.dumps({"prompt": "a", "completion": ""})], "line 1: completion: expected a non-emp"),
        ([json.dumps({"text": "a", "label": True})], "line 1: label: expected a string or an int"),
        ([json.dumps({"text": "a", "label": 1.5})], "line 1: label: expected a string or an int"),
        ([json.dumps({"text": "a", "label": None})], "line 1: label: expected a string or an int"),
        (
            [GOOD_GEN[0], "", cls("a text", "x")],
            "line 3: a classification example, but line 1 is a generation example",
        ),
        (
            [cls("a", "x"), cls("b", 2), cls("c", "y")],
            'line 2: label: 2 is an integer, but line 1\'s is "x"; labels are all strings or',
        ),
        ([cls("a", "x"), cls("b", "x"), cls("c", "x")], 'every example has the label "x"; a'),
        (
            [GOOD_GEN[0], gen("caf\u00e9 \u65e5", "x")],
            "line 2: prompt: character '\u65e5' (U+65E5) at position 5 is not in the tokenizer's",
        ),
        (
            [GOOD_GEN[0], gen("q" * 30, "a" * 30)],
            "line 2: 63 tokens (<bos> prompt <sep> completion <eos>) do not fit the model's "
            "block size 40: at most 41",
        ),
        (GOOD_GEN[:2], "2 examples; at least 3 are needed"),
    ],
)
def test_each_malformed_file_is_refused_naming_the_line(tmp_path, lines, message):
    path = write(tmp_path, lines)
    with pytest.raises(ValueError) as error:
        load_jsonl_task(path, TOK, block_size=40)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_a_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD_GEN[0].encode() + b'\n{"prompt": "caf\xe9", "completion": "x"}\n')
    with pytest.raises(ValueError, match="line 2: not UTF-8 text"):
        load_jsonl_task(path, TOK, block_size=40)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="nope.jsonl: cannot read: No such file"):
        load_jsonl_task(tmp_path / "nope.jsonl", TOK, block_size=40)


def test_labels_become_ids_in_sorted_order_and_a_long_text_is_kept_for_truncation(tmp_path):
    lines = [cls("t" * 100, "zebra"), cls("b", "ant"), cls("c", "moth"), cls("d", "ant")]
    task = load_jsonl_task(write(tmp_path, lines, "animals.jsonl"), TOK, block_size=40)
    assert task.kind == "classification" and task.name == "data:animals.jsonl"
    assert task.label_names == ("ant", "moth", "zebra")
    by_text = {e.prompt: e.target for e in task.train + task.val + task.test}
    assert by_text == {"t" * 100: 2, "b": 0, "c": 1, "d": 0}


def test_integer_labels_sort_as_numbers(tmp_path):
    lines = [cls("a", 10), cls("b", 9), cls("c", 10)]
    task = load_jsonl_task(write(tmp_path, lines), TOK, block_size=40)
    assert task.label_names == ("9", "10")


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 60), split_seed=st.integers(0, 2**16))
def test_the_splits_are_disjoint_cover_the_file_and_depend_only_on_the_split_seed(
    tmp_path_factory, n, split_seed
):
    tmp_path = tmp_path_factory.mktemp("splits")
    lines = [gen(f"{i} + 1", str(i + 1)) for i in range(n)]
    lines.insert(n // 2, "")  # a blank line is skipped
    path = write(tmp_path, lines)
    task = load_jsonl_task(path, TOK, block_size=40, split_seed=split_seed)
    again = load_jsonl_task(path, TOK, block_size=40, split_seed=split_seed)
    assert (task.train, task.val, task.test) == (again.train, again.val, again.test)
    prompts = [e.prompt for e in task.train + task.val + task.test]
    assert sorted(prompts) == sorted(f"{i} + 1" for i in range(n))
    assert len(task.test) == len(task.val) == max(1, n // 10) and len(task.train) >= 1
    assert all(e.target == str(int(e.prompt.split()[0]) + 1) for e in task.train)
    assert task.info["split_seed"] == split_seed and len(task.info["sha256"]) == 64


def test_another_split_seed_cuts_another_test_split(tmp_path):
    path = write(tmp_path, GOOD_GEN)
    tests = {tuple(load_jsonl_task(path, TOK, 40, split_seed=s).test) for s in range(5)}
    assert len(tests) > 1
