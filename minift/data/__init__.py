"""minift.data: the offline corpus, the character tokenizer, the three tasks, their formats.

    from minift.data import load_corpus, standard_tokenizer, load_task, encode_generation_batch
    text = load_corpus()                        # Python's own help pages and docstrings
    tok = standard_tokenizer()                  # 128 ids: <pad> <bos> <sep> <eos> + 124 chars
    task = load_task("en-fr-numbers", seed=0)   # disjoint train / val / test of Example
    idx, targets = encode_generation_batch(tok, task.train[:32], block_size=64)

corpus.py     the pretraining text, read from the stdlib's source with ast (nothing imported)
tokenizer.py  CharTokenizer and its special tokens
named_tokenizer.py  a tokenizer from a name or a folder, offline (PEFT's tokenizer_name_or_path)
tasks.py      Example, Task, load_task: babi-qa (§6.1), kjv-books and stdlib-modules (§6.2),
              en-fr-numbers (§6.3)
formats.py    <bos> prompt <sep> answer <eos> with the prompt masked to −100; classification
metrics.py    accuracy, exact match, chrF (sentence and corpus, as sacrebleu computes it)
userdata.py   a user's own examples from a JSON Lines file (``minift finetune --data``)
"""

from minift.data.corpus import (
    ALPHABET,
    corpus_stats,
    docstring_module_task,
    load_corpus,
    normalize_text,
)
from minift.data.formats import (
    IGNORE_INDEX,
    batches,
    decode_answer,
    encode_classification_batch,
    encode_generation_batch,
    encode_prompt,
    example_sampler,
    lm_sampler,
)
from minift.data.metrics import accuracy, chrf, corpus_chrf, exact_match
from minift.data.named_tokenizer import STANDARD_TOKENIZER_NAME, tokenizer_from_name
from minift.data.tasks import TASK_NAMES, Example, Task, load_task
from minift.data.tokenizer import SPECIAL_TOKENS, CharTokenizer, standard_tokenizer
from minift.data.userdata import load_jsonl_task

__all__ = [
    "ALPHABET",
    "IGNORE_INDEX",
    "SPECIAL_TOKENS",
    "STANDARD_TOKENIZER_NAME",
    "TASK_NAMES",
    "CharTokenizer",
    "Example",
    "Task",
    "accuracy",
    "batches",
    "chrf",
    "corpus_chrf",
    "corpus_stats",
    "decode_answer",
    "docstring_module_task",
    "encode_classification_batch",
    "encode_generation_batch",
    "encode_prompt",
    "exact_match",
    "example_sampler",
    "load_corpus",
    "lm_sampler",
    "load_jsonl_task",
    "load_task",
    "normalize_text",
    "standard_tokenizer",
    "tokenizer_from_name",
]
