"""minift.classify: batches for the training loop, predictions in order, the linear probe, and a
tiny BERT classifier that the ONE training loop fine-tunes with LoRA."""

import numpy as np
import pytest

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


def test_predict_and_embed_keep_the_order_of_the_texts(tok):
    model = BertSentenceClassifier(BertModel(CONFIG, seed=1, dtype=np.float64), 2, seed=1)
    texts = [e.prompt for e in colour_or_animal(9, 1)]
    logits = predict(model, tok, texts, max_length=12, batch_size=4)  # sorted by length inside
    one_by_one = np.concatenate([model.forward(tok.encode_batch([t])[0]) for t in texts])
    np.testing.assert_allclose(logits, one_by_one, rtol=1e-12, atol=1e-12)
    features = embed(model, tok, texts, max_length=12, batch_size=4)
    np.testing.assert_allclose(model.classifier.forward(features), logits, rtol=1e-12, atol=1e-12)
    assert model.training  # the mode it was in comes back


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
