"""A saved fine-tuned model at work: scored on a test split, writing, classifying.

What ``minift evaluate``, ``minift generate`` and ``minift classify`` do, one function each; an
error names the argument it is about (``model: …``), which the command line shows as the flag.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minift.checkpoint import read_json
from minift.data import (
    Example,
    decode_answer,
    encode_classification_batch,
    encode_prompt,
    standard_tokenizer,
)
from minift.functional import softmax_forward
from minift.pipeline.finetuned import FINETUNED_JSON, load_finetuned
from minift.pipeline.finetuning import evaluate, max_sequence
from minift.pipeline.pretraining import BaseSpec, load_base
from minift.pipeline.tasks import data_task, get_task


def finetuned_info(model) -> dict:
    """finetuned.json of the folder ``finetune --out`` wrote (its weights are checked on load)."""
    path = Path(model)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ValueError(f"model: {path} {what}; expected a folder written by finetune --out")
    if not (path / FINETUNED_JSON).is_file():
        raise ValueError(
            f"model: {path} holds no {FINETUNED_JSON}; expected a folder written by finetune --out"
        )
    return read_json(path / FINETUNED_JSON, "fine-tuned model description")


def evaluate_saved(model, *, task=None, data=None, split_seed=0, limit=None):
    """The task's name and the saved model's metrics on its test split (the task a built-in
    one, or the user's file ``data`` split by ``split_seed`` as it was for training)."""
    finetuned_info(model)
    if data:
        positions = max_sequence(load_finetuned(model))
        loaded = data_task(data, positions, split_seed)
    else:
        loaded = get_task(task)
    saved = load_finetuned(model, task=loaded.name)  # refuses a model of another task
    return loaded.name, evaluate(saved, loaded, standard_tokenizer(), limit=limit)


def generate_text(prompt: str, *, model=None, base: BaseSpec | None = None, **sampling) -> str:
    """A fine-tuned ``model`` reads <bos> prompt <sep> as it was trained to and writes its answer
    up to <eos>; without one, the pretrained ``base``, which never saw the format, continues the
    raw prompt. ``sampling``: ``GPT.generate``'s max_new_tokens, temperature, top_k, top_p, seed.
    """
    tok = standard_tokenizer()
    try:
        tok.encode(prompt)  # check the input before any model is built or trained
    except ValueError as e:
        raise ValueError(f"prompt: {e}") from None
    if model:
        info = finetuned_info(model)
        if info.get("kind") == "classification":
            raise ValueError(
                f"model: {model} holds a classifier (task {info.get('task')}), which writes no "
                "text; use minift classify"
            )
        net, ids, eos_id = load_finetuned(model), encode_prompt(tok, prompt), tok.eos_id
    else:
        net, ids, eos_id = load_base(base or BaseSpec()), tok.encode(prompt), None
    max_new_tokens = sampling.pop("max_new_tokens")
    out = net.generate(np.array([ids], dtype=np.int64), max_new_tokens, eos_id=eos_id, **sampling)
    return decode_answer(tok, out[0, len(ids) :]) if model else tok.decode(out[0].tolist())


def classify_texts(model, texts: list[str]) -> list[tuple[str, float]]:
    """Each text's most likely label and its probability, softmax(logits)[label]."""
    info = finetuned_info(model)
    if info.get("kind") != "classification":
        raise ValueError(
            f"model: {model} holds a {info.get('kind')} model (task {info.get('task')}), not a "
            "classifier; use minift generate"
        )
    tok = standard_tokenizer()
    for i, text in enumerate(texts, 1):
        try:
            tok.encode(text)
        except ValueError as e:
            raise ValueError(f"TEXT {i}: {str(e).removeprefix('text: ')}") from None
    net = load_finetuned(model)
    names = info.get("label_names") or [f"label {i}" for i in range(info["num_labels"])]
    examples = [Example(text, 0) for text in texts]
    idx, _ = encode_classification_batch(tok, examples, max_sequence(net))
    probs, _ = softmax_forward(np.asarray(net.forward(idx), dtype=np.float64))  # [B, labels]
    return [(names[int(row.argmax())], float(row.max())) for row in probs]
