"""minift.pipeline: baselines, the confidence table, saving a fine-tuned model of every method."""

import json

import numpy as np
import pytest

from minift import pipeline
from minift.data import Example, Task

TINY = pipeline.BaseSpec(d_model=32, n_layer=1, n_head=2, steps=2)
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
    assert metrics["exact_match"] == 0.5 and 0.5 < metrics["chrf"] < 1


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
    assert "| lora | accuracy | 0.600 ± 0.248 (n=3) | 10 | 10.00 % |" in table
    assert "`minift compare --out x`" in table and "20 minutes, accuracy 90.00 %" in table


@pytest.mark.parametrize("method", [m for m in pipeline.METHODS if m != "base"])
def test_every_method_fine_tunes_saves_and_loads_back_identically(method, tmp_path):
    tok = pipeline.standard_tokenizer()
    task = toy_classification()
    base = pipeline.load_base(TINY, progress=False)
    model = pipeline.prepare_model(base, task, method, seed=0, tok=tok, steps=SETTINGS.steps)
    pipeline.finetune(model, task, method, 0, tok, SETTINGS, progress=False)
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


def test_prompt_tuning_leaves_fewer_positions_for_the_input():
    tok = pipeline.standard_tokenizer()
    base = pipeline.load_base(TINY, progress=False)
    model = pipeline.prepare_model(base, toy_classification(), "prompt", 0, tok)
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


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="method: unknown 'qlora'; choose one of base, full"):
        pipeline.get_method("qlora")
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
