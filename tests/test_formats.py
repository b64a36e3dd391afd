"""The prompt formats, their loss masks and the batch samplers: what the model is trained on."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minift
from minift.data import (
    IGNORE_INDEX,
    Example,
    batches,
    decode_answer,
    encode_classification_batch,
    encode_generation_batch,
    encode_prompt,
    example_sampler,
    lm_sampler,
    standard_tokenizer,
)

TOK = standard_tokenizer()

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


def _unpadded_rows(idx, targets, kind):
    """Each row without its padding, with its targets: comparable across paddings."""
    rows = []
    for b in range(idx.shape[0]):
        n = int((idx[b] != TOK.pad_id).sum())
        target = int(targets[b]) if kind == "classification" else tuple(targets[b, :n].tolist())
        rows.append((tuple(idx[b, :n].tolist()), target))
    return rows


@pytest.mark.parametrize("kind", ["classification", "generation"])
@given(seed=st.integers(0, 2**32 - 1), groups=st.integers(2, 6), batch_size=st.integers(1, 12))
def test_example_sampler_groups_are_the_same_examples_by_length_each_padded_to_its_own(
    kind, seed, groups, batch_size
):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 20, size=10)
    target = (lambda i: i % 3) if kind == "classification" else (lambda i: "ab"[: 1 + i % 2])
    examples = [Example("x" * int(n), target(i)) for i, n in enumerate(lengths)]
    padded = example_sampler(TOK, examples, 32, kind)(np.random.default_rng(seed), batch_size)
    grouped = example_sampler(TOK, examples, 32, kind, groups=groups)
    groups_drawn = grouped(np.random.default_rng(seed), batch_size)
    assert 1 <= len(groups_drawn) <= groups
    rows = [r for idx, t in groups_drawn for r in _unpadded_rows(idx, t, kind)]
    assert sorted(rows) == sorted(_unpadded_rows(*padded, kind))  # the same draw, nothing lost
    widths = [len(r[0]) for r in rows]
    assert widths == sorted(widths)  # shortest first
    for idx, _ in groups_drawn:  # each padded to its own longest row, no further
        assert (idx[:, -1] != TOK.pad_id).any()


def test_example_sampler_groups_must_be_a_positive_integer():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="groups"):
            example_sampler(TOK, EXAMPLES, 64, "generation", groups=bad)


def test_bad_batch_size_is_rejected_by_name():
    with pytest.raises(ValueError, match="batch_size"):
        list(batches([Example("a", 0)], 0))
