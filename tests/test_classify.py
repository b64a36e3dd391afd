"""minift.classify: batches for the training loop, predictions in order, the linear probe, and a
tiny BERT classifier that the ONE training loop fine-tunes with LoRA."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from minift.bert import BertConfig, BertModel, BertSentenceClassifier
from minift.classify import accuracy, embed, fit_linear_probe, predict, wordpiece_sampler
from minift.data.tasks import Example
from minift.data.wordpiece import WordPieceTokenizer
from minift.peft import LoraConfig, get_peft_model
from minift.train import TrainConfig, Trainer

WORDS = ["red", "green", "blue", "cat", "dog", "bird", "the", "a", "is", "big", "small"]
VOCAB = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
CONFIG = BertConfig(
    vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=64, max_position_embeddings=12,
)  # fmt: skip


def colour_or_animal(n, seed):
    """Label 0: a sentence about a colour; label 1: about an animal. Lengths vary."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        label = i % 2
        noun = rng.choice(WORDS[:3] if label == 0 else WORDS[3:6])
        filler = " ".join(rng.choice(WORDS[6:], size=int(rng.integers(0, 5))))
        examples.append(Example(f"{filler} {noun}".strip(), label))
    return examples


@pytest.fixture
def tok():
    return WordPieceTokenizer(VOCAB, model_max_length=12)


def test_the_sampler_draws_distinct_examples_padded_to_the_longest(tok):
    examples = colour_or_animal(10, 0)
    sample = wordpiece_sampler(tok, examples, max_length=6)
    ids, labels = sample(np.random.default_rng(0), 4)
    assert ids.shape[0] == 4 and ids.shape[1] <= 6 and labels.shape == (4,)
    assert (ids[:, 0] == tok.cls_id).all()
    lengths = (ids != tok.pad_id).sum(axis=1)
    assert lengths.max() == ids.shape[1]  # padded to the longest of THIS batch
    rows = {tuple(r) for r in ids.tolist()}
    assert len(rows) <= 4
    ids, labels = sample(np.random.default_rng(0), 50)  # asks for more than there are: all of them
    assert ids.shape[0] == 10
    with pytest.raises(ValueError, match="at least one example"):
        wordpiece_sampler(tok, [], 6)


def test_the_sampler_in_length_groups_draws_the_same_examples_each_padded_less(tok):
    examples = colour_or_animal(20, 5)
    padded_ids, padded_labels = wordpiece_sampler(tok, examples, 8)(np.random.default_rng(1), 9)
    grouped = wordpiece_sampler(tok, examples, 8, groups=3)(np.random.default_rng(1), 9)
    assert [len(labels) for _, labels in grouped] == [3, 3, 3]
    lengths = [(ids != tok.pad_id).sum(axis=1) for ids, _ in grouped]
    assert all(ids.shape[1] == n.max() for (ids, _), n in zip(grouped, lengths, strict=True))
    shortest_first = zip(lengths[:-1], lengths[1:], strict=True)
    assert all(a.max() <= b.min() for a, b in shortest_first)
    assert sum(ids.size for ids, _ in grouped) <= padded_ids.size

    def texts(ids, labels):
        rows = zip(ids.tolist(), labels.tolist(), strict=True)
        return sorted((tuple(t for t in row if t != tok.pad_id), y) for row, y in rows)

    drawn = [t for ids, labels in grouped for t in texts(ids, labels)]
    assert sorted(drawn) == texts(padded_ids, padded_labels)  # the same nine, otherwise padded
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="groups: expected a positive integer"):
            wordpiece_sampler(tok, examples, 8, groups=bad)


@given(seed=st.integers(0, 2**32 - 1), groups=st.integers(1, 3))
@settings(max_examples=10, deadline=None)
def test_the_sampler_pickles_and_draws_the_same_batches(seed, groups):
    """A run goes to another process with its sampler (minift.pipeline.side_by_side)."""
    tok = WordPieceTokenizer(VOCAB, model_max_length=12)
    sampler = wordpiece_sampler(tok, colour_or_animal(20, 5), 8, groups=groups)
    copied = pickle.loads(pickle.dumps(sampler))
    a, b = sampler(np.random.default_rng(seed), 9), copied(np.random.default_rng(seed), 9)
    a, b = ([a], [b]) if groups == 1 else (a, b)
    assert len(a) == len(b) == groups
    for (ids_a, labels_a), (ids_b, labels_b) in zip(a, b, strict=True):
        assert np.array_equal(ids_a, ids_b) and np.array_equal(labels_a, labels_b)


@pytest.mark.parametrize("threads", [1, 2])
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), groups=st.integers(2, 5))
def test_training_in_length_groups_moves_the_weights_as_the_padded_batch_does(
    threads, seed, groups
):
    """Padding is masked out of attention and pooling, and the Trainer weights each group by
    its share of the labels: three steps on groups reach the weights that three steps on the
    padded batches reach (float64, up to the order of sums), on the plain loop and the fast."""
    tok = WordPieceTokenizer(VOCAB, model_max_length=12)
    examples = colour_or_animal(24, seed % 1000)
    trained = []
    for k in (1, groups):
        bert = BertModel(CONFIG, seed=seed, dtype=np.float64)
        model = get_peft_model(
            BertSentenceClassifier(bert, 2, seed=seed),
            LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"],
                       modules_to_save=["classifier"]),
        )  # fmt: skip
        for p in model.parameters():  # B = 0 would hide a wrong gradient through LoRA's A
            if p.trainable:
                p.value[...] += 0.1 * np.random.default_rng(seed).standard_normal(p.shape)
        config = TrainConfig(steps=3, batch_size=10, lr=1e-2, seed=seed, threads=threads)
        sampler = wordpiece_sampler(tok, examples, 10, groups=k)
        Trainer(model, config, sampler, progress=False).train()
        trained.append({n: p.value.copy() for n, p in model.named_parameters().items()})
    padded, grouped = trained
    for name, value in padded.items():
        np.testing.assert_allclose(grouped[name], value, rtol=1e-10, atol=1e-12, err_msg=name)


def test_predict_and_embed_keep_the_order_of_the_texts(tok):
    model = BertSentenceClassifier(BertModel(CONFIG, seed=1, dtype=np.float64), 2, seed=1)
    texts = [e.prompt for e in colour_or_animal(9, 1)]
    logits = predict(model, tok, texts, max_length=12, batch_size=4)  # sorted by length inside
    one_by_one = np.concatenate([model.forward(tok.encode_batch([t])[0]) for t in texts])
    np.testing.assert_allclose(logits, one_by_one, rtol=1e-12, atol=1e-12)
    features = embed(model, tok, texts, max_length=12, batch_size=4)
    np.testing.assert_allclose(model.classifier.forward(features), logits, rtol=1e-12, atol=1e-12)
    assert model.training  # the mode it was in comes back


def test_predict_and_embed_show_a_bar_over_the_texts_when_asked(tok, capsys):
    model = BertSentenceClassifier(BertModel(CONFIG, seed=2, dtype=np.float64), 2, seed=2)
    texts = [e.prompt for e in colour_or_animal(7, 2)]
    quiet = embed(model, tok, texts, max_length=12, batch_size=3)
    assert capsys.readouterr().err == ""
    shown = embed(model, tok, texts, max_length=12, batch_size=3, progress=True)
    err = capsys.readouterr().err
    assert "embed" in err and "7/7" in err  # every text counted
    np.testing.assert_array_equal(shown, quiet)
    predict(model, tok, texts, max_length=12, batch_size=3, progress=True)
    err = capsys.readouterr().err
    assert "predict" in err and "7/7" in err


@given(
    n=st.integers(1, 20),
    batch_size=st.integers(1, 6),
    threads=st.integers(2, 3),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=15, deadline=None)
def test_predict_and_embed_on_threads_give_the_one_threads_values_bit_for_bit(
    n, batch_size, threads, seed
):
    """The batches shared out between threads, each on a replica: the same values, in order."""
    tok = WordPieceTokenizer(VOCAB, model_max_length=12)
    model = BertSentenceClassifier(BertModel(CONFIG, seed=seed % 7), 2, seed=seed % 5)  # float32
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["query", "value"]), seed=seed)
    texts = [e.prompt for e in colour_or_animal(n, seed)]
    with threadpool_limits(1, user_api="blas"):
        for fn in (predict, embed):
            one = fn(model, tok, texts, 12, batch_size=batch_size, threads=1)
            many = fn(model, tok, texts, 12, batch_size=batch_size, threads=threads)
            assert np.array_equal(one, many), fn.__name__
    assert model.training  # the mode it was in comes back


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_predict_and_embed_refuse_a_thread_count_that_is_not_a_positive_integer(tok, bad):
    model = BertSentenceClassifier(BertModel(CONFIG, seed=1), 2, seed=1)
    for fn in (predict, embed):
        with pytest.raises(ValueError, match="threads: expected a positive integer"):
            fn(model, tok, ["red cat"], 12, threads=bad)


def test_the_linear_probe_separates_separable_features():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    centers = 3.0 * rng.standard_normal((3, 5))
    x = centers[y] + 0.3 * rng.standard_normal((300, 5))
    head = fit_linear_probe(x, y, num_labels=3, steps=200, lr=0.05, seed=0)
    assert accuracy(head.forward(x), y) > 0.98
    with pytest.raises(ValueError, match="expected \\[N, H\\] and \\[N\\]"):
        fit_linear_probe(x, y[:10], num_labels=3)


def test_accuracy():
    assert accuracy(np.array([[0.1, 0.9], [2.0, 1.0]]), [1, 1]) == 0.5


def test_lora_fine_tuning_of_a_bert_classifier_in_the_one_training_loop(tok):
    """The Trainer never asks what it trains: a BERT classifier with LoRA and a new head learns
    a task the frozen random encoder cannot read off, and only LoRA and the head move."""
    train, test = colour_or_animal(128, 3), colour_or_animal(40, 4)
    bert = BertModel(CONFIG, seed=3, dtype=np.float32)
    frozen = {n: p.value.copy() for n, p in bert.named_parameters().items()}
    model = get_peft_model(
        BertSentenceClassifier(bert, 2, seed=3),
        LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value", "dense"],
                   modules_to_save=["classifier"]),
    )  # fmt: skip
    config = TrainConfig(steps=60, batch_size=16, lr=3e-2, warmup_steps=5, seed=3)
    result = Trainer(model, config, wordpiece_sampler(tok, train, 12), progress=False).train()
    assert np.mean(result.losses[-10:]) < 0.5 * np.mean(result.losses[:5])
    labels = [e.target for e in test]
    assert accuracy(predict(model, tok, [e.prompt for e in test], 12), labels) > 0.9
    for name, value in frozen.items():  # frozen means bit-identical
        np.testing.assert_array_equal(_param(bert, name), value)


def _param(model, name):
    """The current value of a parameter by its name, looking through LoRA's base_layer."""
    module_name, attr = name.rsplit(".", 1)
    module = model.get_submodule(module_name) if module_name else model
    module = getattr(module, "base_layer", module)
    return getattr(module, attr).value
