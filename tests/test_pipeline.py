"""minift.pipeline: baselines, the confidence table, saving a fine-tuned model of every method."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import dangling_link, disk_state, replace_by_folder
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minift import pipeline
from minift.data import Example, Task
from minift.pipeline.comparison import start_order, worker_settings
from minift.pipeline.finetuning import train_config

TINY = pipeline.BaseSpec(d_model=32, n_layer=1, n_head=2, steps=2)
TWO_BLOCKS = pipeline.BaseSpec(d_model=32, n_layer=2, n_head=2, steps=2)  # what sharing ties
SETTINGS = pipeline.RunSettings(steps=2, batch_size=4, eval_examples=4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _use_cache(cache, monkeypatch):
    monkeypatch.setenv("MINIFT_CACHE", str(cache))


def toy_classification():
    examples = [Example(f"text {i}", i % 3) for i in range(12)]
    return Task("toy", "classification", examples, examples[:3], examples[:6], ("a", "b", "c"))


def test_majority_baseline_predicts_the_most_frequent_training_label():
    task = toy_classification()
    train = [Example("x", 2)] * 5 + [Example("y", 0)] * 2
    task = Task("toy", "classification", train, [], task.test, ("a", "b", "c"))
    expected = np.mean([e.target == 2 for e in task.test])
    assert pipeline.baseline_metrics(task) == {"accuracy": pytest.approx(expected)}


def test_copy_baseline_answers_with_the_prompt():
    examples = [Example("same", "same"), Example("one", "un")]
    task = Task("toy", "generation", examples, [], examples)
    metrics = pipeline.baseline_metrics(task)
    assert metrics["exact_match"] == 0.5
    # the corpus chrF computed by hand in test_metrics.py, not the segments' mean chrF (27/44)
    assert metrics["chrf"] == pytest.approx(6235 / 7073, rel=1e-12)


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=20, deadline=None)
def test_classification_predictions_are_put_back_in_the_examples_order(seed):
    """Evaluation classifies the examples in order of length (little padding), then puts the
    predictions back. A stand-in model predicts each row's unpadded length mod 3, and each
    example's label is its own length mod 3: accuracy 1 only if every prediction went back to
    its example."""
    from minift.data import standard_tokenizer
    from minift.model import GPTConfig

    tok = standard_tokenizer()

    class LengthModel:
        config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=1,
                           d_model=4)  # fmt: skip
        training = False

        def eval(self):
            pass

        def train(self, mode=True):
            pass

        def forward(self, idx):  # [B, T] -> [B, 3]
            return np.eye(3)[(idx != tok.pad_id).sum(axis=1) % 3]

    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, size=150)  # several chunks, the last one short
    assert 150 > 2 * pipeline.finetuning.EVAL_CHUNK and 150 % pipeline.finetuning.EVAL_CHUNK
    examples = [Example("w" * int(n), int(n + 2) % 3) for n in lengths]  # + <bos>, <eos>
    task = Task("toy", "classification", examples, [], examples, ("a", "b", "c"))
    assert pipeline.evaluate(LengthModel(), task, tok) == {"accuracy": 1.0}
    shuffled = [Example(e.prompt, examples[(i + 1) % 150].target) for i, e in enumerate(examples)]
    task = Task("toy", "classification", examples, [], shuffled, ("a", "b", "c"))
    assert pipeline.evaluate(LengthModel(), task, tok)["accuracy"] < 1.0  # the check can fail


def test_evaluation_stops_each_batch_at_eos_with_the_answers_of_a_full_length_run(monkeypatch):
    """The saving is where every row has ended early; the answers are those of the full run."""
    from minift.data import decode_answer, encode_prompt, standard_tokenizer
    from minift.model import GPT, GPTConfig
    from minift.pipeline.finetuning import _answers

    tok = standard_tokenizer()
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2,
                          d_model=16), seed=3)  # fmt: skip
    model.wte.weight.value[tok.eos_id] *= 6  # the tied head: <eos> is argmax for some states
    prompts = ["seven", "eight", "three", "forty-one", "ninety-two", "sixty-six"]
    lengths = []
    generate = model.generate

    def spy(idx, n, **kwargs):
        out = generate(idx, n, **kwargs)
        lengths.append(out.shape[1] - idx.shape[1])
        return out

    monkeypatch.setattr(model, "generate", spy)
    answers = _answers(model, tok, prompts, max_new=20)
    full = [decode_answer(tok, generate(np.array([encode_prompt(tok, p)]), 20, temperature=0)[0,
            len(encode_prompt(tok, p)):]) for p in prompts]  # fmt: skip
    assert answers == full and any(answers)  # not all empty: answers of several characters
    assert min(lengths) < 20  # some batch did stop early: the case under test happened


def test_summary_is_mean_and_student_t_interval_over_seeds():
    records = [
        {"task": "t", "method": "lora", "seed": s, "metric": "accuracy", "value": v,
         "train_seconds": 1.0 + s, "trainable_params": 10, "total_params": 100,
         "optimizer_state_bytes": 80, "peak_rss_mb": 50.0}
        for s, v in enumerate([0.5, 0.6, 0.7])
    ]  # fmt: skip
    (row,) = pipeline.summarize(records)
    assert row["mean"] == pytest.approx(0.6) and row["n"] == 3
    assert row["half_width"] == pytest.approx(4.302652729749464 * 0.1 / np.sqrt(3), rel=1e-9)
    assert row["value"] == "0.600 ± 0.248 (n=3)"
    table = pipeline.results_markdown([row], "minift compare --out x")
    # no "full" row, so the "of full's" column stays empty
    assert "| lora | accuracy | 0.600 ± 0.248 (n=3) |  | 10 | 10.00 % |" in table
    assert "`minift compare --out x`" in table and "20 minutes, accuracy 90.00 %" in table


@pytest.mark.parametrize("method", [m for m in pipeline.METHODS if m != "base"])
def test_every_method_moves_only_what_it_trains_and_loads_back_identically(method, tmp_path):
    tok = pipeline.standard_tokenizer()
    task = toy_classification()
    base = pipeline.load_base(TWO_BLOCKS, progress=False)
    model = pipeline.prepare_model(base, task, method, seed=0, tok=tok, steps=SETTINGS.steps)
    params = model.named_parameters()
    before = {n: p.value.copy() for n, p in params.items()}
    pipeline.finetune(model, task, method, 0, tok, SETTINGS, progress=False)
    # what the method freezes stays bit for bit; everything it trains has moved
    for name, p in params.items():
        moved = not np.array_equal(p.value, before[name])
        assert moved == p.trainable, (name, "trainable" if p.trainable else "frozen")
    idx = np.array([[1, 5, 6, 7, 3]])
    expected = model.eval().forward(idx)
    pipeline.save_finetuned(model, tmp_path, task, method)
    loaded = pipeline.load_finetuned(tmp_path)
    np.testing.assert_array_equal(loaded.forward(idx), expected)
    info = json.loads((tmp_path / "finetuned.json").read_text())
    assert info["method"] == method and info["num_labels"] == 3


def test_a_saved_model_with_a_missing_tensor_is_refused(tmp_path):
    from minift.checkpoint import load_tensors, save_tensors

    tok = pipeline.standard_tokenizer()
    task = toy_classification()
    model = pipeline.prepare_model(pipeline.load_base(TINY, progress=False), task, "lora", 0, tok)
    pipeline.save_finetuned(model, tmp_path, task, "lora")
    tensors, meta = load_tensors(tmp_path / "model.safetensors")
    del tensors["h.0.attn.c_attn.lora_A"]
    save_tensors(tmp_path / "model.safetensors", tensors, meta)
    with pytest.raises(ValueError, match=r"missing keys \['h.0.attn.c_attn.lora_A'\]"):
        pipeline.load_finetuned(tmp_path)


# -- a saved fine-tuned model is loaded strictly ----------------------------------------------

IDX = np.array([[1, 5, 6, 7, 3]])


@pytest.fixture(scope="module")
def saved_lora(tmp_path_factory):
    """A LoRA classifier trained two steps (so its B is not zero and alpha matters), saved:
    (directory, {file name: bytes}, its logits on IDX). The base is untrained: no cache needed."""
    tok = pipeline.standard_tokenizer()
    task = toy_classification()
    base = pipeline.GPT(TINY.model_config(tok.vocab_size), seed=0)
    model = pipeline.prepare_model(base, task, "lora", seed=0, tok=tok, steps=SETTINGS.steps)
    pipeline.finetune(model, task, "lora", 0, tok, SETTINGS, progress=False)
    directory = tmp_path_factory.mktemp("saved-lora")
    pipeline.save_finetuned(model, directory, task, "lora")
    files = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert sorted(files) == ["finetuned.json", "model.safetensors"]
    return directory, files, model.eval().forward(IDX)


def _rewrite_with_checksum(directory, info):
    """Write ``info`` as finetuned.json AND re-sign the weights with its checksum, as a tool that
    knew the format would: what is left to catch is the content itself."""
    from minift.checkpoint import CONFIG_DIGEST_KEY, json_digest, load_tensors, save_tensors

    tensors, meta = load_tensors(directory / "model.safetensors")
    save_tensors(
        directory / "model.safetensors", tensors, {**meta, CONFIG_DIGEST_KEY: json_digest(info)}
    )
    (directory / "finetuned.json").write_text(json.dumps(info))


def _copy_of_saved(saved_lora, tmp_path):
    directory, files, _ = saved_lora
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    return json.loads(files["finetuned.json"])


def test_an_edited_description_is_refused_not_loaded_as_another_model(saved_lora, tmp_path):
    """lora_alpha 16 -> 99 in finetuned.json used to load, scaling B·A by another factor."""
    info = _copy_of_saved(saved_lora, tmp_path)
    info["peft_config"]["lora_alpha"] = 99
    (tmp_path / "finetuned.json").write_text(json.dumps(info, indent=2))
    with pytest.raises(
        ValueError, match="finetuned.json: not the config model.safetensors was saved with"
    ):
        pipeline.load_finetuned(tmp_path)


def test_weights_without_the_description_checksum_are_refused(saved_lora, tmp_path):
    from minift.checkpoint import CONFIG_DIGEST_KEY, load_tensors, save_tensors

    _copy_of_saved(saved_lora, tmp_path)
    tensors, meta = load_tensors(tmp_path / "model.safetensors")
    del meta[CONFIG_DIGEST_KEY]
    save_tensors(tmp_path / "model.safetensors", tensors, meta)
    with pytest.raises(ValueError, match="model.safetensors: no checksum of finetuned.json"):
        pipeline.load_finetuned(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda info: info.pop("kind"), "finetuned.json: kind: missing"),
        (lambda info: info.update(kind="regression"), "kind: expected 'classification' or"),
        (lambda info: info.update(num_labels="3"), "num_labels: expected a number of labels"),
        (lambda info: info.update(num_labels=True), "num_labels: expected a number of labels"),
        (lambda info: info.update(extra=1), r"finetuned.json: unknown fields \['extra'\]"),
        (
            lambda info: info["model_config"].update(n_layer="2"),
            "model_config: .*n_layer: expected a positive integer, got '2'",
        ),
        (lambda info: info["model_config"].update(bogus=1), "model_config: TypeError"),
        (lambda info: info["tokenizer"].pop("chars"), "tokenizer: KeyError"),
        (lambda info: info["peft_config"].update(peft_type="Q"), "unknown peft_type 'Q'"),
        (lambda info: info["peft_config"].update(r=-1), "peft_config: r: expected a positive"),
        (lambda info: info["peft_config"].update(r=4), "model.safetensors: .*shape"),
    ],
)
def test_a_malformed_description_is_a_valueerror_naming_the_field(
    saved_lora, tmp_path, edit, message
):
    info = _copy_of_saved(saved_lora, tmp_path)
    edit(info)
    _rewrite_with_checksum(tmp_path, info)
    with pytest.raises(ValueError, match=message):
        pipeline.load_finetuned(tmp_path)


def test_a_model_for_another_task_is_refused_naming_both(saved_lora):
    directory, _, _ = saved_lora
    with pytest.raises(
        ValueError, match=f"task: {directory} holds a model fine-tuned for toy, not"
    ):
        pipeline.load_finetuned(directory, task="babi-qa")
    assert pipeline.load_finetuned(directory, task="toy") is not None


def _loads_identically_or_is_refused(directory, expected_logits):
    """The fuzz's one rule: a ValueError naming one of the two files, or the original model."""
    try:
        model = pipeline.load_finetuned(directory)
    except ValueError as e:
        assert "finetuned.json" in str(e) or "model.safetensors" in str(e), str(e)
        return "refused"
    np.testing.assert_array_equal(model.forward(IDX), expected_logits)
    return "identical"


FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("name", ["finetuned.json", "model.safetensors"])
@FUZZ
@given(fraction=st.floats(0, 1, exclude_max=True))
@example(fraction=0.0)
@example(fraction=0.999999)  # the last byte gone (finetuned.json: only its newline)
def test_a_truncated_saved_model_is_refused_or_loads_identically(
    saved_lora, tmp_path, name, fraction
):
    _copy_of_saved(saved_lora, tmp_path)
    blob = saved_lora[1][name]
    (tmp_path / name).write_bytes(blob[: int(fraction * len(blob))])
    _loads_identically_or_is_refused(tmp_path, saved_lora[2])


@pytest.mark.parametrize("name", ["finetuned.json", "model.safetensors"])
@FUZZ
@given(fraction=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
@example(fraction=0.0, bit=0)
@example(fraction=0.999999, bit=7)
def test_a_bit_flipped_saved_model_is_refused_or_loads_identically(
    saved_lora, tmp_path, name, fraction, bit
):
    _copy_of_saved(saved_lora, tmp_path)
    flipped = bytearray(saved_lora[1][name])
    flipped[int(fraction * len(flipped))] ^= 1 << bit
    (tmp_path / name).write_bytes(bytes(flipped))
    _loads_identically_or_is_refused(tmp_path, saved_lora[2])


def _resign(directory, edit):
    """Rewrite model.safetensors with ``edit`` applied, keeping minift's checksums valid: what
    is left to catch is the content itself."""
    from minift.checkpoint import load_tensors, save_tensors

    tensors, meta = load_tensors(directory / "model.safetensors")
    name = next(iter(sorted(tensors)))
    tensors[name] = edit(tensors[name].copy())
    save_tensors(directory / "model.safetensors", tensors, meta)
    return name


def _with_first(value):
    def edit(array):
        array.flat[0] = value
        return array

    return edit


# damage -> (what to do to the copied folder, returning the path to load; the message's fragment)
FINETUNED_DAMAGE = {
    "nan": (lambda d: _resign(d, _with_first(np.nan)) and d, "holds nan at"),
    "inf": (lambda d: _resign(d, _with_first(np.inf)) and d, "holds inf at"),
    "int32": (lambda d: _resign(d, lambda a: a.astype(np.int32)) and d, "got dtype int32"),
    "weights-a-folder": (
        lambda d: replace_by_folder(d / "model.safetensors") or d,
        "a folder, expected a file",
    ),
    "description-a-folder": (
        lambda d: replace_by_folder(d / "finetuned.json") or d,
        "a folder, expected a file",
    ),
    "description-a-dangling-link": (lambda d: dangling_link(d / "finetuned.json") or d, "no such"),
    "a-file-for-the-folder": (lambda d: d / "finetuned.json", "finetuned.json"),
}


@pytest.mark.parametrize("damage", list(FINETUNED_DAMAGE))
def test_a_damaged_fine_tuned_folder_is_refused_naming_file_and_field(saved_lora, tmp_path, damage):
    """Each class of damage a loader must catch: one MiniftError naming the file (and the
    tensor where there is one), nothing on disk changed."""
    from minift.errors import MiniftError

    _copy_of_saved(saved_lora, tmp_path)
    do, fragment = FINETUNED_DAMAGE[damage]
    target = do(tmp_path)
    before = disk_state(tmp_path)
    with pytest.raises(MiniftError) as info:
        pipeline.load_finetuned(target)
    message = str(info.value)
    assert fragment in message and str(tmp_path) in message, message
    if damage in ("nan", "inf", "int32"):
        assert "model.safetensors: h." in message or "model.safetensors: " in message, message
    assert disk_state(tmp_path) == before


def test_prompt_and_prefix_tuning_leave_fewer_positions_for_the_input():
    tok = pipeline.standard_tokenizer()
    base = pipeline.load_base(TINY, progress=False)
    for method in ("prompt", "prefix"):  # both put 8 virtual tokens before the input
        model = pipeline.prepare_model(base, toy_classification(), method, 0, tok)
        assert pipeline.max_sequence(model) == TINY.block_size - 8
    lora = pipeline.prepare_model(base, toy_classification(), "lora", 0, tok)
    assert pipeline.max_sequence(lora) == TINY.block_size


def test_a_run_in_its_own_process_reports_its_own_memory(tmp_path):
    records, curves = pipeline.compare(
        ["stdlib-modules"], ["majority", "bitfit"], [0], SETTINGS, TINY, isolate=True
    )
    assert {r["method"] for r in records} == {"majority", "bitfit"}
    bitfit = next(r for r in records if r["method"] == "bitfit")
    assert bitfit["trainable_params"] > 0 and bitfit["optimizer_state_bytes"] > 0
    assert 10 < bitfit["peak_rss_mb"] < 2000
    assert len(curves["stdlib-modules"]["bitfit"][0]) == SETTINGS.steps


def test_two_workers_give_the_records_of_one_in_the_same_order(monkeypatch):
    """Runs in parallel children, each with one BLAS thread: the same runs and the same metrics
    (the training is the same arithmetic; only the seconds and memory are the machine's)."""
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    one_thread = dataclasses.replace(SETTINGS, threads=1)  # as each worker of two trains
    runs = (["stdlib-modules"], ["majority", "bitfit"], [0, 1], one_thread, TINY)
    one, _ = pipeline.compare(*runs, isolate=True, workers=1)
    two, _ = pipeline.compare(*runs, isolate=True, workers=2)
    keys = ("task", "method", "seed", "metric", "trainable_params")
    assert [tuple(r[k] for k in keys) for r in two] == [tuple(r[k] for k in keys) for r in one]
    for a, b in zip(one, two, strict=True):
        assert b["value"] == pytest.approx(a["value"], abs=1e-9)
    assert "OPENBLAS_NUM_THREADS" not in os.environ  # the parent's is restored
    with pytest.raises(ValueError, match="workers: expected a positive integer, got 0"):
        pipeline.compare(*runs, workers=0)


def test_workers_start_the_runs_that_train_before_those_that_only_evaluate():
    methods = ["base", "majority", "full", "base", "lora", "copy", "full"]
    assert start_order(methods) == [2, 4, 6, 0, 1, 3, 5]
    assert start_order(["lora", "full"]) == [0, 1]


def test_each_of_two_workers_trains_in_one_thread_unless_told_otherwise():
    assert worker_settings(SETTINGS, 2).threads == 1
    assert worker_settings(dataclasses.replace(SETTINGS, threads=2), 2).threads == 2
    assert worker_settings(SETTINGS, 1).threads is None  # one run: default_threads() decides


@pytest.mark.parametrize(("cores", "threads"), [({0}, 1), ({0, 1}, 2)])
def test_a_run_trains_in_the_default_threads_unless_told_otherwise(monkeypatch, cores, threads):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: cores, raising=False)
    assert train_config("generation", "lora", 0, SETTINGS).threads == threads
    one = dataclasses.replace(SETTINGS, threads=1)
    assert train_config("generation", "lora", 0, one).threads == 1


def test_the_cached_base_is_keyed_by_its_training_threads_too(monkeypatch):
    """Two threads sum the gradient in another order: another float32 base, another cache entry."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    one = TINY.key()
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert TINY.key() != one


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="method: unknown 'lorax'; choose one of base, full"):
        pipeline.get_method("lorax")
    with pytest.raises(ValueError, match="task: unknown 'poetry'; choose one of babi-qa"):
        pipeline.check_task("poetry")
    with pytest.raises(ValueError, match="'copy' is no baseline for a classification task"):
        pipeline.run_one("stdlib-modules", "copy", 0, SETTINGS, TINY)


def test_every_default_task_fits_the_default_base():
    """A task whose examples are longer than the base's positions would fail at step one."""
    from minift.data import example_sampler

    tok = pipeline.standard_tokenizer()
    for name in pipeline.default_tasks():
        task = pipeline.get_task(name)
        for split in (task.train, task.val, task.test):
            example_sampler(tok, split, pipeline.BaseSpec().block_size, task.kind)  # raises if not


# -- learning rates: chosen on the validation split, per kind of task -----------------------------

SWEEP = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "lr_sweep.json"


def test_method_learning_rates_are_the_ones_the_validation_sweep_chose():
    """METHODS' learning rates are not typed in from memory: they are lr_sweep.json's choices."""
    chosen = json.loads(SWEEP.read_text())["chosen"]
    assert {"full/classification", "lora/classification", "lora/generation"} <= set(chosen)
    for key, lr in chosen.items():
        method, kind = key.split("/")
        assert pipeline.get_method(method).lr_for(kind) == lr, key


def test_the_sweep_picks_the_best_mean_validation_score_per_kind():
    from benchmarks.lr_sweep import choose

    records = [  # stdlib-modules and kjv-books are classification, en-fr-numbers generation
        {"task": "stdlib-modules", "method": "lora", "lr": 1e-2, "accuracy": 0.9},
        {"task": "kjv-books", "method": "lora", "lr": 1e-2, "accuracy": 0.1},
        {"task": "stdlib-modules", "method": "lora", "lr": 3e-3, "accuracy": 0.6},
        {"task": "kjv-books", "method": "lora", "lr": 3e-3, "accuracy": 0.5},
        {"task": "en-fr-numbers", "method": "lora", "lr": 1e-2, "exact_match": 0.2, "chrf": 0.6},
        {"task": "en-fr-numbers", "method": "lora", "lr": 3e-2, "exact_match": 0.2, "chrf": 0.7},
    ]
    chosen = choose(records)
    assert chosen == {"lora/classification": 3e-3, "lora/generation": 3e-2}  # mean; chrF tie-break


def test_the_sweep_runs_again_what_was_scored_with_the_old_mean_of_sentence_chrf():
    from benchmarks.lr_sweep import CHRF_DEFINITION, _stale

    old = {"task": "en-fr-numbers", "method": "lora", "lr": 1e-2, "exact_match": 0.2, "chrf": 0.6}
    assert _stale(old)
    assert not _stale({**old, "chrf_definition": CHRF_DEFINITION})
    assert not _stale({"task": "kjv-books", "method": "lora", "lr": 1e-2, "accuracy": 0.5})


def test_the_sweep_page_marks_old_chrf_and_says_which_choices_rest_on_it():
    from benchmarks.lr_sweep import choices_resting_on_chrf, markdown

    def run(lr, em, chrf):
        return {
            "task": "en-fr-numbers",
            "method": "lora",
            "lr": lr,
            "exact_match": em,
            "chrf": chrf,
        }

    decided = [run(1e-2, 0.3, 0.6), run(3e-2, 0.2, 0.9)]
    assert choices_resting_on_chrf(decided, {"lora/generation": 1e-2}) == []
    tied = [run(1e-2, 0.2, 0.6), run(3e-2, 0.2, 0.9)]
    assert choices_resting_on_chrf(tied, {"lora/generation": 3e-2}) == ["lora/generation"]
    page = markdown(tied, {"lora/generation": 3e-2}, ["python -m benchmarks.lr_sweep"])
    assert "chrf† 0.600" in page and "these choices rest on it: lora/generation." in page
    committed = json.loads(SWEEP.read_text())
    page = markdown(committed["records"], committed["chosen"], committed["commands"])
    table = (SWEEP.parent / "lr_sweep.md").read_text()
    assert page.split("\n", 3)[3] == table.split("\n", 3)[3]  # all but the date line


def test_the_sweep_page_marks_a_choice_at_an_end_of_the_learning_rates_tried():
    from benchmarks.lr_sweep import choices_at_an_end, choose, markdown

    def run(task, method, lr, accuracy):
        return {"task": task, "method": method, "lr": lr, "accuracy": accuracy}

    records = [  # lora's best is inside what it tried; head's is its largest, full's its smallest
        *(
            run("stdlib-modules", "lora", lr, a)
            for lr, a in [(1e-3, 0.4), (3e-3, 0.6), (1e-2, 0.5)]
        ),
        *(run("stdlib-modules", "head", lr, a) for lr, a in [(1e-2, 0.3), (3e-2, 0.5)]),
        *(run("kjv-books", "full", lr, a) for lr, a in [(1e-4, 0.4), (3e-4, 0.3), (1e-3, 0.2)]),
        run("kjv-books", "sparse", 1e-2, 0.4),  # one lr tried: no end to speak of
    ]
    chosen = choose(records)
    assert choices_at_an_end(records, chosen) == {
        "head/classification": "highest",
        "full/classification": "lowest",
    }
    page = markdown(records, chosen, ["python -m benchmarks.lr_sweep"])
    assert "| head | classification | 0.03 | 0.03 | highest |" in page
    assert "| lora | classification | 0.003 | 0.003 |  |" in page
    assert "2 of 4 choices are the lowest or highest learning rate tried" in page


def test_a_method_without_a_classification_lr_uses_its_one_lr_for_both_kinds():
    adalora = pipeline.get_method("adalora")  # not swept: one hand-set lr
    assert adalora.classification_lr is None
    assert adalora.lr_for("classification") == adalora.lr_for("generation") == adalora.lr
    with pytest.raises(ValueError, match="kind: expected 'classification' or 'generation'"):
        adalora.lr_for("regression")


def test_settings_refuse_a_split_other_than_val_or_test():
    with pytest.raises(ValueError, match="eval_split: expected 'val' or 'test', got 'train'"):
        pipeline.RunSettings(eval_split="train")


def test_overview_puts_each_method_beside_full_fine_tuning():
    def record(task, method, seed, value, trainable):
        return dict(task=task, method=method, seed=seed, metric="accuracy", value=value,
                    trainable_params=trainable, total_params=200, train_seconds=1.0,
                    peak_rss_mb=1.0, optimizer_state_bytes=0)  # fmt: skip

    records = [
        record("t", "full", 0, 0.5, 200),
        record("t", "full", 1, 0.7, 200),
        record("t", "lora", 0, 0.57, 6),
        record("t", "lora", 1, 0.57, 6),
        record("t", "majority", 0, 0.3, 0),
    ]
    table = pipeline.overview_markdown(pipeline.summarize(records)).splitlines()
    assert table[0] == "| method | trainable (most) | t (accuracy) |"
    half_width = 12.706 * 0.1 / np.sqrt(2) * np.sqrt(2)  # t(0.975, 1) · s / √n, s = 0.1·√2
    assert table[2] == f"| full | 100.00 % | 0.600 ± {half_width:.3f} (100 %) |"
    assert table[3] == "| lora | 3.00 % | 0.570 ± 0.000 (95 %) |"
    assert table[4] == "| majority |  | 0.300 (50 %) |"  # one run, so no interval


def test_the_articles_rows_stand_beside_what_their_methods_measured():
    def record(method, seed, value, seconds):
        return dict(task="t", method=method, seed=seed, metric="accuracy", value=value,
                    trainable_params=10, total_params=200, train_seconds=seconds,
                    peak_rss_mb=1.0, optimizer_state_bytes=0)  # fmt: skip

    records = [record("full", 0, 0.5, 10.0), record("full", 1, 0.7, 12.0)]
    records += [record("lora", 0, 0.57, 4.0), record("lora", 1, 0.57, 4.0)]
    rows = pipeline.summarize(records)
    table = pipeline.article_comparison_markdown(rows).splitlines()
    assert table[2] == "| article | the article claims | minift method | t (accuracy) | t train s |"
    full, lora = (next(r for r in rows if r["method"] == m) for m in ("full", "lora"))
    sft, peft, lora_row = table[4:7]
    assert sft.startswith("| SFT | ") and sft.endswith(
        f"| `full` | {full['value']} | {full['train_seconds']} |"
    )
    assert "accuracy 95.00 %" in peft and peft.endswith("| `sparse` | not run | |")
    assert "20 minutes, accuracy 90.00 %" in lora_row
    assert lora_row.endswith("| `lora` | 0.570 ± 0.000 (n=2) | 4.0 ± 0.0 (n=2) |"), lora_row


def test_method_config_applies_options_and_validates_them_without_a_model():
    lora = pipeline.method_config("lora", "classification", 10, r=2, lora_alpha=4.0)
    assert (lora.r, lora.lora_alpha, lora.modules_to_save) == (2, 4.0, ["score"])
    assert pipeline.method_config("lora", "generation", 10).modules_to_save is None
    assert pipeline.method_config("base", "generation", 10) is None
    with pytest.raises(ValueError, match="r: expected a positive integer rank, got 0"):
        pipeline.method_config("lora", "generation", 10, r=0)
    with pytest.raises(ValueError, match="r: method bitfit has no such option"):
        pipeline.method_config("bitfit", "generation", 10, r=4)
    with pytest.raises(ValueError, match="r: method base has no options"):
        pipeline.method_config("base", "generation", 10, r=4)


# -- the compare plots, drawn again from a results folder ----------------------------------------


def synthetic_results(tmp_path):
    """A results folder as compare writes it: 2 tasks × 12 methods × 2 seeds, with curves."""
    rng = np.random.default_rng(0)
    methods = ["base", *(f"method-{i}" for i in range(11))]
    tasks = {"kjv-books": "accuracy", "en-fr-numbers": "exact_match"}
    records = [dict(task=task, method=m, seed=seed, metric=metric, value=float(rng.random()),
                    trainable_params=0 if m == "base" else 10 ** (2 + i % 4), total_params=10**6,
                    train_seconds=float(rng.random() * 60), peak_rss_mb=200.0,
                    optimizer_state_bytes=0)
               for task, metric in tasks.items() for i, m in enumerate(methods)
               for seed in (0, 1)]  # fmt: skip
    curves = {task: {m: (1 + rng.random((2, 50))).tolist() for m in methods[1:]} for task in tasks}
    return pipeline.write_results(records, curves, tmp_path, "minift compare --seeds 2")


def test_the_plots_are_drawn_again_from_results_and_curves_alone(tmp_path):
    from minift.pipeline import replot

    written = synthetic_results(tmp_path)
    pngs = {p.name: p.read_bytes() for p in written if p.suffix == ".png"}
    assert sorted(pngs) == ["loss_en-fr-numbers.png", "loss_kjv-books.png",
                            "metric_vs_params.png", "train_seconds.png"]  # fmt: skip
    for name in pngs:
        (tmp_path / name).unlink()
    assert replot.main([str(tmp_path)]) == 0
    for name, png in pngs.items():  # the same pictures, from the two JSON files alone
        assert (tmp_path / name).read_bytes() == png, name
        assert int.from_bytes(png[16:20], "big") <= 1800, name  # no wider than a screen


def test_redrawn_score_panels_name_their_task_s_metric(tmp_path):
    from minift import plots

    synthetic_results(tmp_path)
    drawn = {}
    real = plots.plot_metric_vs_params

    def recording(rows, path, metric_name=None):
        drawn["tasks"] = list(dict.fromkeys(r["task"] for r in rows))
        return real(rows, path, metric_name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "plot_metric_vs_params", recording)
        pipeline.write_plots(tmp_path)
    assert drawn["tasks"] == ["kjv-books (accuracy)", "en-fr-numbers (exact match)"]


def test_redrawing_names_the_record_that_lacks_a_field(tmp_path):
    from minift.errors import FileFormatError

    synthetic_results(tmp_path)
    records = json.loads((tmp_path / "results.json").read_text())
    del records[3]["train_seconds"]
    (tmp_path / "results.json").write_text(json.dumps(records))
    with pytest.raises(FileFormatError, match=r"results.json: \[3\]: missing \['train_seconds'\]"):
        pipeline.write_plots(tmp_path)


def test_the_sweep_saves_each_run_as_it_ends_over_the_earlier_sweeps(tmp_path):
    """An interrupted sweep keeps what it finished (started again, it redoes only the rest),
    and a run repeated replaces its earlier record instead of joining it."""
    from benchmarks.lr_sweep import save

    def run(task, lr, accuracy):
        return {"task": task, "method": "lora", "lr": lr, "steps": 300, "seed": 0,
                "accuracy": accuracy}  # fmt: skip

    earlier = {
        "commands": ["python -m benchmarks.lr_sweep"],
        "records": [run("kjv-books", 1e-2, 0.3), run("stdlib-modules", 1e-2, 0.4)],
    }
    command = "python -m benchmarks.lr_sweep --methods lora"
    save(tmp_path, earlier, [run("kjv-books", 1e-2, 0.5)], command)
    saved = json.loads((tmp_path / "lr_sweep.json").read_text())
    assert saved["records"] == [run("stdlib-modules", 1e-2, 0.4), run("kjv-books", 1e-2, 0.5)]
    assert saved["commands"] == [*earlier["commands"], command]
    assert saved["chosen"] == {"lora/classification": 1e-2}
    assert "| kjv-books | lora | 0.01 | accuracy 0.500 |" in (tmp_path / "lr_sweep.md").read_text()
