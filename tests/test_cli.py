"""The `minift` command: every subcommand runs end to end on tiny settings; bad input exits
non-zero with a one-line message and leaves nothing half-written."""

import argparse
import contextlib
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minift import cli, pipeline
from minift.machine import describe_markdown

TINY_BASE = ["--base-d-model", "32", "--base-n-layer", "1", "--base-n-head", "2"]
FAST = [
    "--steps",
    "2",
    "--batch-size",
    "4",
    "--eval-examples",
    "4",
    "--pretrain-steps",
    "2",
    *TINY_BASE,
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _use_cache(cache, monkeypatch):
    monkeypatch.setenv("MINIFT_CACHE", str(cache))


RECORD_KEYS = {"task", "method", "seed", "trainable_params", "total_params", "train_seconds",
               "peak_rss_mb", "optimizer_state_bytes", "metric", "value"}  # fmt: skip


def run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_demo_writes_the_table_and_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, _ = run(capsys, "demo", "--out", str(out), "--seeds", "2", "--in-process", *FAST)
    assert code == 0
    records = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in records}
    assert methods == {"base", "majority", "full", "lora", "sparse", "bitfit"}
    assert all(set(r) == RECORD_KEYS for r in records)
    assert {r["seed"] for r in records if r["method"] == "lora"} == {0, 1}
    assert (
        "| lora | accuracy |" in stdout
        and "What the article claims, beside what was measured" in stdout
    )
    for name in [
        "results.md",
        "metric_vs_params.png",
        "loss_stdlib-modules.png",
        "train_seconds.png",
    ]:
        assert (out / name).stat().st_size > 0, name


def test_compare_writes_results_curves_and_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    runs = ["--tasks", "stdlib-modules", "--methods", "base", "lora", "--seeds", "1"]
    code, stdout, _ = run(capsys, "compare", "--out", str(out), "--in-process", *runs, *FAST)
    assert code == 0
    records = json.loads((out / "results.json").read_text())
    assert all(set(r) == RECORD_KEYS for r in records)
    assert sorted((r["method"], r["seed"], r["metric"]) for r in records) == [
        ("base", 0, "accuracy"),
        ("lora", 0, "accuracy"),
    ]
    base, lora = sorted(records, key=lambda r: r["method"])
    assert base["trainable_params"] == 0 < lora["trainable_params"] < lora["total_params"]
    curves = json.loads((out / "curves.json").read_text())
    assert list(curves) == ["stdlib-modules"] and list(curves["stdlib-modules"]) == ["lora"]
    assert [len(c) for c in curves["stdlib-modules"]["lora"]] == [2]  # one seed, two steps
    table = (out / "results.md").read_text()
    assert "| lora | accuracy |" in table and "| base | accuracy |" in table and table in stdout
    machine = json.loads((out / "machine.json").read_text())  # what its times were measured on
    assert machine["cpu"].startswith("CPU: ") and machine["matmul_peak_gflops_one_thread"] > 0
    assert machine["wall_minutes"] >= 0 and describe_markdown(machine) in table
    for name in ["metric_vs_params.png", "loss_stdlib-modules.png", "train_seconds.png"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_finetune_evaluate_generate_round_trip(tmp_path, capsys):
    out = tmp_path / "ft"
    code, stdout, _ = run(capsys, "finetune", "--task", "stdlib-modules", "--method", "lora",
                          "--r", "2", "--out", str(out), *FAST)  # fmt: skip
    assert code == 0 and "stdlib-modules / lora: accuracy = " in stdout
    accuracy = float(stdout.split("accuracy = ")[1].split()[0])
    code, stdout, _ = run(capsys, "evaluate", "--task", "stdlib-modules", "--model", str(out),
                          "--eval-examples", "4")  # fmt: skip
    assert code == 0 and float(stdout.split("accuracy = ")[1].split()[0]) == accuracy
    code, stdout, _ = run(
        capsys,
        "generate",
        "--prompt",
        "def ",
        "--max-new-tokens",
        "5",
        "--pretrain-steps",
        "2",
        *TINY_BASE,
    )
    assert code == 0 and stdout.startswith("def ") and len(stdout.strip()) >= 5


def test_finetune_with_loraplus_records_the_ratio_with_the_method(tmp_path, capsys):
    out = tmp_path / "ft"
    code, stdout, _ = run(capsys, "finetune", "--task", "stdlib-modules", "--method", "lora",
                          "--loraplus-lr-ratio", "16", "--out", str(out), *FAST)  # fmt: skip
    assert code == 0 and "stdlib-modules / lora: accuracy = " in stdout
    assert '"loraplus_lr_ratio": 16.0' in (out / "finetuned.json").read_text()


def test_finetune_trains_vera_and_its_saved_model_evaluates_to_the_same_score(tmp_path, capsys):
    out, adapter = tmp_path / "ft", tmp_path / "adapter"
    code, stdout, _ = run(capsys, "finetune", "--task", "stdlib-modules", "--method", "vera",
                          "--r", "16", "--vera-dropout", "0.1", "--out", str(out),
                          "--save-adapter", str(adapter), *FAST)  # fmt: skip
    assert code == 0 and "stdlib-modules / vera: accuracy = " in stdout
    accuracy = float(stdout.split("accuracy = ")[1].split()[0])
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["peft_type"] == "VERA" and saved["r"] == 16 and saved["vera_dropout"] == 0.1
    code, stdout, _ = run(capsys, "evaluate", "--task", "stdlib-modules", "--model", str(out),
                          "--eval-examples", "4")  # fmt: skip
    assert code == 0 and float(stdout.split("accuracy = ")[1].split()[0]) == accuracy


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_finetune_trains_a_lycoris_method_and_saves_its_peft_adapter(tmp_path, capsys, method):
    out, adapter = tmp_path / "ft", tmp_path / "adapter"
    code, stdout, _ = run(capsys, "finetune", "--task", "stdlib-modules", "--method", method,
                          "--r", "2", "--alpha", "3", "--rank-dropout", "0.25",
                          "--module-dropout", "0.125", "--out", str(out), "--save-adapter",
                          str(adapter), *FAST)  # fmt: skip
    assert code == 0 and f"stdlib-modules / {method}: accuracy = " in stdout
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert (saved["peft_type"], saved["r"], saved["alpha"]) == (method.upper(), 2, 3.0)
    assert (saved["rank_dropout"], saved["module_dropout"]) == (0.25, 0.125)


def test_finetune_trains_ln_tuning_and_saves_its_peft_adapter(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    code, stdout, _ = run(capsys, "finetune", "--task", "stdlib-modules", "--method", "ln-tuning",
                          "--target-modules", "ln_1", "ln_f", "--save-adapter", str(adapter),
                          *FAST)  # fmt: skip
    assert code == 0 and "stdlib-modules / ln-tuning: accuracy = " in stdout
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LN_TUNING"
    assert saved["target_modules"] == ["transformer.h.0.ln_1", "transformer.ln_f"]  # one block


def test_finetune_starts_a_prompt_from_a_text_and_saves_it_as_pefts_text_init(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    code, stdout, _ = run(capsys, "finetune", "--task", "stdlib-modules", "--method", "prompt",
                          "--prompt-tuning-init", "TEXT", "--prompt-tuning-init-text", "module: ",
                          "--tokenizer-name-or-path", "minift-char", "--save-adapter",
                          str(adapter), *FAST)  # fmt: skip
    assert code == 0 and "stdlib-modules / prompt: accuracy = " in stdout
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["prompt_tuning_init"] == "TEXT" and saved["prompt_tuning_init_text"] == "module: "
    assert saved["tokenizer_name_or_path"] == "minift-char"


def test_finetune_qlora_trains_saves_a_quantized_model_and_a_lora_adapter(tmp_path, capsys):
    out, adapter = tmp_path / "ft", tmp_path / "adapter"
    code, stdout, _ = run(capsys, "finetune", "--task", "stdlib-modules", "--method", "qlora",
                          "--r", "2", "--blocksize", "32", "--out", str(out), "--save-adapter",
                          str(adapter), *FAST)  # fmt: skip
    assert code == 0 and "stdlib-modules / qlora: accuracy = " in stdout
    accuracy = float(stdout.split("accuracy = ")[1].split()[0])
    # the model comes back quantized, its codes loaded (not re-quantized from a fresh base)
    weights = json.loads((out / "finetuned.json").read_text())["peft_config"]
    assert weights["peft_type"] == "MINIFT_QLORA" and weights["blocksize"] == 32
    code, stdout, _ = run(capsys, "evaluate", "--task", "stdlib-modules", "--model", str(out),
                          "--eval-examples", "4")  # fmt: skip
    assert code == 0 and float(stdout.split("accuracy = ")[1].split()[0]) == accuracy
    # the adapter is LoRA's, as PEFT writes it for a 4-bit base
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and "blocksize" not in config and config["r"] == 2


def test_pretrain_to_a_directory(tmp_path, capsys):
    code, stdout, _ = run(
        capsys, "pretrain", "--steps", "2", "--out", str(tmp_path / "base"), *TINY_BASE
    )
    assert code == 0 and "final loss" in stdout
    assert (tmp_path / "base" / "model.safetensors").exists()


def test_count_prints_every_method(capsys):
    code, stdout, _ = run(capsys, "count", "--d-model", "32", "--n-layer", "2", "--n-head", "2")
    assert code == 0
    for method in ["full", "lora", "bitfit", "adapter", "sharing", "last-k"]:
        assert f"| {method} |" in stdout


def test_bench_runs_a_benchmark_of_the_checkout(tmp_path):
    # a child process prints, so check its files rather than capsys
    code = cli.main(
        ["bench", "param_counts", "--out", str(tmp_path), "--d-model", "32", "--n-layer", "2"]
        + ["--n-head", "2", "--vocab-size", "40", "--block-size", "32"]
    )
    assert code == 0
    table = (tmp_path / "param_counts.md").read_text()
    assert "| full |" in table and (tmp_path / "param_counts.png").stat().st_size > 0


def test_bench_outside_a_checkout_says_where_the_benchmarks_are(tmp_path, monkeypatch, capsys):
    import minift

    monkeypatch.setattr(minift, "__file__", str(tmp_path / "site-packages" / "minift" / "x.py"))
    code, _, err = run(capsys, "bench", "train_step")
    assert code == 2 and "benchmarks/train_step.py" in err and "source checkout" in err


def test_finetune_in_two_threads(tmp_path, capsys):
    code, stdout, _ = run(capsys, "finetune", "--task", "stdlib-modules", "--method", "full",
                          "--threads", "2", *FAST)  # fmt: skip
    assert code == 0 and "stdlib-modules / full: accuracy = " in stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["finetune", "--task", "poetry", "--method", "lora"],
            "--task: invalid choice: 'poetry' (choose from 'babi-qa',",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "qdora"],
            "--method: invalid choice: 'qdora' (choose from 'base', 'full',",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "lora", "--lr", "-1"],
            "--lr: expected a finite learning rate >= 0, got -1.0",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "lora", "--lr", "inf"],
            "--lr: expected a finite learning rate >= 0, got inf",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "bitfit", "--r", "4"],
            "--r: method bitfit has no such option",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "base", "--r", "4"],
            "--r: method base has no options",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "lora", "--r", "-1"],
            "--r: expected ≥ 1, got -1",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "lora", "--r", "0"],
            "--r: expected ≥ 1, got 0",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "lora", "--loraplus-lr-ratio", "0"],
            "--loraplus-lr-ratio: expected a number in (0, inf], got 0",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "adalora", "--loraplus-lr-ratio", "2"],
            "--loraplus-lr-ratio: method adalora has no such option",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "lora", "--steps", "abc"],
            "--steps: expected a positive integer, got 'abc'",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "lora", "--seed", "-1"],
            "--seed: expected ≥ 0, got -1",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "lora", "--lora-dropout", "1"],
            "--lora-dropout: expected a number in [0, 1), got 1",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "bitfit", "--save-adapter", "adapter"],
            "--save-adapter: method bitfit has no PEFT adapter format; the methods that have "
            "one: lora, dora, qlora, adalora, ln-tuning, ia3, vera, loha, lokr, prompt, prefix",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "lora", "--save-adapter", "no/a"],
            "--save-adapter: cannot write to no/a: its parent no does not exist",
        ),
        (
            ["finetune", "--data", "missing.jsonl", "--method", "lora"],
            "--data: missing.jsonl: cannot read: No such file or directory",
        ),
        (
            ["finetune", "--task", "babi-qa", "--data", "x.jsonl", "--method", "lora"],
            "--data: not allowed with argument --task",
        ),
        (
            ["finetune", "--task", "babi-qa", "--method", "lora", "--target-modules", "nope"],
            "--target-modules: ['nope'] matched no Linear module",
        ),
        (["generate", "--prompt", "日本"], "--prompt: text: character '日' (U+65E5) at position 0"),
        (["generate", "--prompt", "a", "--top-p", "0"], "--top-p: expected a number in (0, 1]"),
        (["generate", "--prompt", "a", "--top-p", "1.5"], "--top-p: expected a number in (0, 1]"),
        (["generate", "--prompt", "a", "--temperature", "-1"], "--temperature: expected a num"),
        (["generate", "--prompt", "a", "--model", "nope"], "--model: nope does not exist;"),
        (["evaluate", "--task", "babi-qa", "--model", "nope"], "--model: nope does not exist;"),
        (["classify", "--model", "nope", "some text"], "--model: nope does not exist;"),
        (["classify", "--model", "."], "minift classify: error: the following arguments are"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(argv, message, tmp_path, monkeypatch, capsys):
    """Checked before any work: a cold cache stays empty (no base was pretrained, no progress
    bar was printed) and no --out directory appears."""
    cold = tmp_path / "cold-cache"
    cold.mkdir()
    monkeypatch.setenv("MINIFT_CACHE", str(cold))
    monkeypatch.chdir(tmp_path)  # relative paths in argv are in tmp_path
    out = ["--out", str(tmp_path / "out")] if argv[0] == "finetune" else []
    extra = {"finetune": FAST, "generate": TINY_BASE}.get(argv[0], [])
    code, _, err = run(capsys, *argv, *out, *extra)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(cold.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cold-cache"]


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "--tasks", "babi-qa", *FAST],
        ["demo", *FAST],
        ["finetune", "--task", "stdlib-modules", "--method", "bitfit", *FAST],
        ["pretrain", "--steps", "2", *TINY_BASE],
    ],
)
def test_an_output_directory_that_cannot_be_written(argv, tmp_path, monkeypatch, capsys):
    """--out under a regular file (which stops root too, unlike chmod): refused before any work,
    and nothing is created, neither in the cache nor beside the file."""
    cold = tmp_path / "cold-cache"
    cold.mkdir()
    monkeypatch.setenv("MINIFT_CACHE", str(cold))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run(capsys, *argv, "--out", str(blocker / "sub"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--out: cannot write to {blocker / 'sub'}: {blocker} is not a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cold-cache", "file"]
    assert list(cold.iterdir()) == [] and blocker.read_text() == "not a directory"


def test_a_failed_save_removes_the_directories_it_made(tmp_path, monkeypatch, capsys):
    """The disk fills up as finetuned.json is written, after model.safetensors: the new --out
    directory goes, so no half-saved model is left."""
    import errno

    from minift.pipeline import finetuned

    write_json = finetuned.atomic_write_json

    def full_disk_for_finetuned_json(path, obj):
        if path.name == "finetuned.json":
            assert (path.parent / "model.safetensors").exists()  # the failure comes midway
            raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")
        write_json(path, obj)

    monkeypatch.setattr(finetuned, "atomic_write_json", full_disk_for_finetuned_json)
    out = tmp_path / "ft"
    code, _, err = run(capsys, "finetune", "--task", "stdlib-modules", "--method", "bitfit",
                       "--out", str(out), *FAST)  # fmt: skip
    assert code == 2 and "No space left on device" in err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_a_corrupted_model_is_a_clear_error_and_nothing_is_loaded(tmp_path, capsys):
    out = tmp_path / "ft"
    assert (
        run(
            capsys,
            "finetune",
            "--task",
            "stdlib-modules",
            "--method",
            "bitfit",
            "--out",
            str(out),
            *FAST,
        )[0]
        == 0
    )
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    code, _, err = run(capsys, "evaluate", "--task", "stdlib-modules", "--model", str(out))
    assert code == 2 and "not a readable safetensors file" in err


IDX = np.array([[1, 5, 6, 7, 3]])


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, cache):
    """A LoRA classifier fine-tuned through the command: (its files, what `evaluate` prints for
    it, its logits on IDX)."""
    out = tmp_path_factory.mktemp("finetuned") / "ft"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINIFT_CACHE", str(cache))
        argv = ["finetune", "--task", "stdlib-modules", "--method", "lora", "--out", str(out)]
        assert cli.main([*argv, *FAST]) == 0
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert cli.main([*EVALUATE, "--model", str(out)]) == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    return files, printed.getvalue(), pipeline.load_finetuned(out).forward(IDX)


EVALUATE = ["evaluate", "--task", "stdlib-modules", "--eval-examples", "4"]


@pytest.mark.parametrize("name", ["finetuned.json", "model.safetensors"])
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fraction=st.floats(0, 1, exclude_max=True), bit=st.integers(-1, 7))
@example(fraction=0.999999, bit=-1)  # finetuned.json without its last newline: the same JSON
@example(fraction=0.5, bit=-1)
def test_evaluate_refuses_a_damaged_model_in_one_line(
    finetuned, tmp_path, capsys, name, fraction, bit
):
    """A truncated (bit -1) or bit-flipped file: exit 2 with one line naming the file, never a
    traceback; or, when the damage leaves the same model, the original model's every logit."""
    files, printed, logits = finetuned
    for file_name, blob in files.items():
        (tmp_path / file_name).write_bytes(blob)
    blob = bytearray(files[name])
    at = int(fraction * len(blob))
    if bit < 0:
        del blob[at:]
    else:
        blob[at] ^= 1 << bit
    (tmp_path / name).write_bytes(bytes(blob))
    code, stdout, err = run(capsys, *EVALUATE, "--model", str(tmp_path))
    if code == 0:  # only a change that leaves the same model may load
        assert stdout == printed
        np.testing.assert_array_equal(pipeline.load_finetuned(tmp_path).forward(IDX), logits)
        return
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("minift evaluate: error: ")
    assert "finetuned.json" in err or "model.safetensors" in err


def test_evaluate_refuses_a_model_fine_tuned_for_another_task(finetuned, tmp_path, capsys):
    """A classifier of Python modules scored on French numbers used to print a score."""
    for file_name, blob in finetuned[0].items():
        (tmp_path / file_name).write_bytes(blob)
    code, stdout, err = run(capsys, "evaluate", "--task", "en-fr-numbers", "--model", str(tmp_path))
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
    assert f"task: {tmp_path} holds a model fine-tuned for stdlib-modules, not en-fr-numbers" in err


# -- checkpoints and --resume ---------------------------------------------------------------

# four steps (the later --steps wins over FAST's two), LoRA with dropout so that the dropout RNG's
# state must be restored too
RESUMABLE = ["finetune", "--task", "stdlib-modules", "--method", "lora", "--r", "2",
             "--lora-dropout", "0.1", *FAST, "--steps", "4"]  # fmt: skip


def _tensors(path):
    from minift.checkpoint import load_tensors

    return load_tensors(path)[0]


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_finetune_resumed_halfway_ends_bit_for_bit_where_one_run_ends(tmp_path, capsys):
    """4 steps in one run == 2 steps (stopped as an interruption would) + --resume to 4: the
    same saved tensors, bit for bit, and the same per-step losses in the log."""
    one, two, checkpoints = tmp_path / "one", tmp_path / "two", tmp_path / "ckpt"
    log_one = ["--log", str(tmp_path / "one.jsonl")]
    code, printed_one, _ = run(capsys, *RESUMABLE, "--out", str(one), *log_one)
    assert code == 0

    half = [*RESUMABLE, "--checkpoint-dir", str(checkpoints), "--log", str(tmp_path / "two.jsonl")]
    code, stdout, _ = run(capsys, *half, "--stop-at", "2", "--out", str(two))
    assert code == 0 and "stopped at step 2 of 4" in stdout and "accuracy" not in stdout
    assert not two.exists()  # an interrupted run writes no model
    latest = json.loads((checkpoints / "latest.json").read_text())["checkpoint"]
    assert latest == "step-0000002"
    state = json.loads((checkpoints / latest / "trainer.json").read_text())
    assert state["step"] == 2 and state["run"]["task"] == "stdlib-modules"
    assert state["run"]["method"] == "lora" and state["run"]["peft_config"]["r"] == 2
    assert state["run"]["model_config"]["d_model"] == 32
    assert state["run"]["tokenizer"] == pipeline.standard_tokenizer().to_dict()
    halfway = _tensors(checkpoints / latest / "model.safetensors")

    code, printed_two, _ = run(capsys, *half, "--resume", "--out", str(two))
    assert code == 0 and printed_two.replace(str(two), str(one)) == printed_one

    expected, got = _tensors(one / "model.safetensors"), _tensors(two / "model.safetensors")
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        assert got[name].dtype == expected[name].dtype
    # not vacuous: the resumed run did train (LoRA's B moved from where step 2 left it)
    assert any(not np.array_equal(halfway[n], got[n]) for n in got if n.endswith("lora_B"))
    log_one, log_two = _log(tmp_path / "one.jsonl"), _log(tmp_path / "two.jsonl")
    assert [r["step"] for r in log_two] == [1, 2, 3, 4]
    assert [r["loss"] for r in log_two] == [r["loss"] for r in log_one]


def test_pretrain_resumed_halfway_ends_bit_for_bit_where_one_run_ends(tmp_path, capsys):
    """The same for the base: 4 steps == 2 + --resume to 4, and the log shows the resume."""
    pretrain = ["pretrain", "--steps", "4", *TINY_BASE]
    assert run(capsys, *pretrain, "--out", str(tmp_path / "one"))[0] == 0
    checkpoints = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--log", str(tmp_path / "log")]
    code, stdout, _ = run(capsys, *pretrain, *checkpoints, "--stop-at", "2")
    assert code == 0 and "stopped at step 2 of 4" in stdout
    code, _, _ = run(capsys, *pretrain, *checkpoints, "--resume", "--out", str(tmp_path / "two"))
    assert code == 0
    expected = _tensors(tmp_path / "one" / "model.safetensors")
    got = _tensors(tmp_path / "two" / "model.safetensors")
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert [r["step"] for r in _log(tmp_path / "log")] == [1, 2, 3, 4]  # two, then two more


def test_eval_every_scores_the_validation_split_during_training(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    code, stdout, _ = run(capsys, "finetune", "--task", "stdlib-modules", "--method", "bitfit",
                          *FAST, "--eval-every", "1", "--log", str(log))  # fmt: skip
    assert code == 0
    records = _log(log)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["eval"]["step"] == 1  # the last step's is the final evaluation, below
    value = records[0]["eval"]["accuracy"]
    assert f"step 1: validation accuracy = {value:.4f}" in stdout
    assert (
        "step 2: validation accuracy = " in stdout and "stdlib-modules / bitfit: accuracy" in stdout
    )


def test_resume_refuses_another_runs_checkpoint_before_any_work(tmp_path, monkeypatch, capsys):
    checkpoints = tmp_path / "ckpt"
    made = [*RESUMABLE, "--steps", "2", "--checkpoint-dir", str(checkpoints), "--stop-at", "1"]
    assert run(capsys, *made)[0] == 0
    cold = tmp_path / "cold-cache"
    cold.mkdir()
    monkeypatch.setenv("MINIFT_CACHE", str(cold))  # nothing may be pretrained from here on
    resume = [*RESUMABLE, "--steps", "2", "--checkpoint-dir", str(checkpoints), "--resume"]
    for argv, message in [
        ([*resume, "--method", "dora"], "run.method: checkpoint 'lora', this run 'dora'"),
        ([*resume, "--r", "3"], "run.peft_config.r: checkpoint 2, this run 3"),
        ([*resume, "--steps", "3"], "train_config.steps: checkpoint 2, this run 3"),
        ([*resume, "--lr", "0.5"], "train_config.lr: checkpoint 0.003, this run 0.5"),
        ([*resume[:-1]], f"--checkpoint-dir: {checkpoints} holds an earlier run's checkpoints"),
        ([*RESUMABLE, "--checkpoint-dir", str(cold), "--resume"], "--resume: no checkpoint in"),
        ([*RESUMABLE, "--resume"], "--resume: needs --checkpoint-dir"),
        (
            [*RESUMABLE, "--checkpoint-dir", str(tmp_path / "new"), "--stop-at", "4"],
            "--stop-at: expected a step before --steps 4, got 4",
        ),
        ([*RESUMABLE, "--log", str(tmp_path / "no" / "log")], f"{tmp_path / 'no'} is not a dir"),
    ]:
        code, stdout, err = run(capsys, *argv)
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1, argv
        assert message in err, (message, err)
    assert list(cold.iterdir()) == [] and not (tmp_path / "new").exists()


def test_unknown_subcommand_is_one_line_and_exit_status_2(capsys):
    code, _, err = run(capsys, "nope")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "minift: error: command: invalid choice: 'nope' (choose from 'demo'," in err


def test_no_stray_files_after_a_failed_run(tmp_path, capsys):
    out = tmp_path / "demo"
    code, _, _ = run(capsys, "demo", "--out", str(out), "--task", "poetry", *FAST)
    assert code == 2
    assert not out.exists()  # proven writable, but made only when results are written


# -- your own data, adapters in PEFT's format, classify, generate -----------------------------

TINY_SPEC = pipeline.BaseSpec(steps=2, d_model=32, n_layer=1, n_head=2)
SUM_LINES = [
    {"prompt": f"{a} plus {b}", "completion": str(a + b)} for a in range(6) for b in range(5)
]
ANIMAL_LINES = [
    {"text": f"{word} number {i}", "label": label}
    for i in range(8)
    for word, label in [("cat", "mammal"), ("owl", "bird"), ("dog", "mammal"), ("eel", "fish")]
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def sums(tmp_path_factory, cache):
    """A LoRA generation model fine-tuned on a data file: (the file, its --out, its adapter)."""
    folder = tmp_path_factory.mktemp("sums")
    data = write_jsonl(folder / "sums.jsonl", SUM_LINES)
    out, adapter = folder / "model", folder / "adapter"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINIFT_CACHE", str(cache))
        argv = ["finetune", "--data", str(data), "--method", "lora", "--r", "2", "--lr", "0.05"]
        argv += ["--out", str(out), "--save-adapter", str(adapter), *FAST]
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(argv) == 0
    return data, out, adapter


@pytest.fixture(scope="module")
def animals(tmp_path_factory, cache):
    """A classifier fine-tuned on a data file with string labels: (the file, its --out)."""
    folder = tmp_path_factory.mktemp("animals")
    data = write_jsonl(folder / "animals.jsonl", ANIMAL_LINES)
    out = folder / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINIFT_CACHE", str(cache))
        argv = ["finetune", "--data", str(data), "--method", "lora", "--out", str(out), *FAST]
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(argv) == 0
    return data, out


def test_finetune_on_a_data_file_prints_its_scores_and_evaluate_reads_it_back(sums, capsys):
    data, out, _ = sums
    assert sorted(p.name for p in out.iterdir()) == ["finetuned.json", "model.safetensors"]
    assert json.loads((out / "finetuned.json").read_text())["task"] == "data:sums.jsonl"
    code, stdout, err = run(capsys, "evaluate", "--data", str(data), "--model", str(out))
    assert code == 0, err
    assert stdout.startswith("data:sums.jsonl: exact_match = ") and "chrf = " in stdout
    code, _, err = run(capsys, "evaluate", "--task", "stdlib-modules", "--model", str(out))
    assert code == 2 and "holds a model fine-tuned for data:sums.jsonl, not stdlib-modules" in err


def test_the_saved_adapter_loads_onto_the_base_with_the_fine_tuned_models_logits(sums):
    from minift.peft import PeftModel

    _, out, adapter = sums
    assert sorted(p.name for p in adapter.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    idx = np.array([[1, 20, 21, 22, 2, 30]])
    finetuned = pipeline.load_finetuned(out).forward(idx)
    loaded = PeftModel.from_pretrained(pipeline.load_base(TINY_SPEC), adapter).forward(idx)
    np.testing.assert_array_equal(loaded, finetuned)
    base = pipeline.load_base(TINY_SPEC).forward(idx)
    assert not np.allclose(loaded, base)  # the adapter did train: the test could fail


@pytest.mark.reference
def test_an_adapter_saved_by_the_command_loads_in_hugging_face_peft_with_equal_logits(
    sums, tmp_path
):
    from helpers import hf_gpt2, import_references

    from minift.peft import PeftModel

    torch, _, peft_lib = import_references()
    _, _, adapter = sums
    base = pipeline.load_base(TINY_SPEC)
    base64 = pipeline.GPT(base.config, dtype=np.float64)
    base64.load_state_dict({k: v.astype(np.float64) for k, v in base.state_dict().items()})
    hf = hf_gpt2(base64, tmp_path / "base")  # saved with minift.hub, read by transformers
    hf = peft_lib.PeftModel.from_pretrained(hf, adapter)
    idx = np.array([[1, 20, 21, 22, 2, 30, 40, 50]])
    ours = PeftModel.from_pretrained(base64, adapter).forward(idx)
    with torch.no_grad():
        theirs = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


def test_generate_reads_the_trained_format_and_stops_at_end_of_sequence(sums, capsys):
    """What the command prints is the greedy answer to <bos> prompt <sep>, cut at <eos>."""
    from minift.data import decode_answer, encode_prompt

    _, out, _ = sums
    tok = pipeline.standard_tokenizer()
    ids = np.array([encode_prompt(tok, "3 plus 4")])
    model = pipeline.load_finetuned(out)
    expected = decode_answer(tok, model.generate(ids, 30, temperature=0)[0, ids.shape[1] :])
    code, stdout, _ = run(capsys, "generate", "--model", str(out), "--prompt", "3 plus 4",
                          "--max-new-tokens", "30", "--temperature", "0")  # fmt: skip
    assert code == 0 and stdout == expected + "\n"
    # nucleus sampling with a vanishing p is greedy decoding, whatever the temperature and seed
    for seed in ["0", "7"]:
        code, nucleus, _ = run(capsys, "generate", "--model", str(out), "--prompt", "3 plus 4",
                               "--max-new-tokens", "30", "--temperature", "2", "--top-p", "1e-9",
                               "--seed", seed)  # fmt: skip
        assert code == 0 and nucleus == stdout


def test_generate_with_a_seed_repeats_and_another_seed_varies(sums, capsys):
    _, out, _ = sums
    argv = ["generate", "--model", str(out), "--prompt", "1 plus 1", "--temperature", "5"]
    argv += ["--max-new-tokens", "20", "--top-p", "0.99"]
    outputs = [run(capsys, *argv, "--seed", str(s))[1] for s in [1, 1, 2, 3, 4]]
    assert outputs[0] == outputs[1] and len(set(outputs)) > 1


def test_classify_prints_each_texts_label_and_probability(animals, capsys):
    from minift.data import Example, encode_classification_batch
    from minift.functional import softmax_forward

    _, out = animals
    texts = ["cat number 3", "eel number 1", "owl"]
    code, stdout, err = run(capsys, "classify", "--model", str(out), *texts)
    assert code == 0, err
    model = pipeline.load_finetuned(out)
    tok = pipeline.standard_tokenizer()
    idx, _ = encode_classification_batch(tok, [Example(t, 0) for t in texts], 128)
    probs, _ = softmax_forward(model.forward(idx).astype(np.float64))
    names = ["bird", "fish", "mammal"]  # the file's labels, sorted
    expected = [
        f"{names[p.argmax()]}\t{p.max():.4f}\t{t}" for t, p in zip(texts, probs, strict=True)
    ]
    assert stdout.splitlines() == expected


def test_classify_and_generate_refuse_the_other_kind_of_model(sums, animals, capsys):
    code, stdout, err = run(capsys, "classify", "--model", str(sums[1]), "some text")
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
    assert "holds a generation model (task data:sums.jsonl), not a classifier" in err
    code, stdout, err = run(capsys, "generate", "--model", str(animals[1]), "--prompt", "x")
    assert code == 2 and stdout == "" and "holds a classifier (task data:animals.jsonl)" in err
    code, _, err = run(capsys, "classify", "--model", str(animals[1]), "ok", "日")
    assert code == 2 and "TEXT 2: character '日' (U+65E5) at position 0" in err


def test_a_folder_without_a_model_is_one_clear_line(tmp_path, capsys):
    code, _, err = run(capsys, "classify", "--model", str(tmp_path), "text")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--model: {tmp_path} holds no finetuned.json; expected a folder written by" in err


def test_a_bad_line_of_the_data_file_is_named_before_any_work(tmp_path, monkeypatch, capsys):
    cold = tmp_path / "cold-cache"
    cold.mkdir()
    monkeypatch.setenv("MINIFT_CACHE", str(cold))
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(SUM_LINES[0]) + "\n" + '{"prompt": "a", "answer": "b"}\n')
    code, _, err = run(capsys, "finetune", "--data", str(data), "--method", "lora", *FAST)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--data: {data}: line 2: expected the keys prompt, completion" in err
    assert list(cold.iterdir()) == []


@pytest.mark.parametrize("flag", ["--out", "--save-adapter"])
def test_an_output_whose_parent_is_missing_is_refused_before_any_work(
    flag, tmp_path, monkeypatch, capsys
):
    cold = tmp_path / "cold-cache"
    cold.mkdir()
    monkeypatch.setenv("MINIFT_CACHE", str(cold))
    target = tmp_path / "no-such-dir" / "x"
    code, _, err = run(capsys, "finetune", "--task", "stdlib-modules", "--method", "lora",
                       flag, str(target), *FAST)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{flag}: cannot write to {target}: its parent {target.parent} does not exist" in err
    assert list(cold.iterdir()) == [] and not target.parent.exists()


def test_every_option_is_described_and_every_default_shown():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = action.option_strings[0] if action.option_strings else action.dest
            assert action.help and action.help.strip(), (name, label)
            if action.default is not None and action.default is not False:
                shown = " ".join(f"(default: {action.default})".split())
                assert shown in text, (name, label, shown)
        assert "(default: None)" not in text, name  # no default: the help says what happens
    finetune = " ".join(subparsers.choices["finetune"].format_help().split())
    assert "--steps STEPS optimizer steps (default: 200)" in finetune
    assert "--seed SEED the new head's init, dropout and batches (default: 0)" in finetune


def test_validation_scores_are_printed_while_training_runs(tmp_path, monkeypatch, capsys):
    """Before step 3 trains, the validation lines of steps 1 and 2 are already on stdout."""
    from minift.train import Trainer

    printed_before_step = []
    step = Trainer._train_step

    def recording_step(self):
        printed_before_step.append(capsys.readouterr().out)
        return step(self)

    monkeypatch.setattr(Trainer, "_train_step", recording_step)
    code = cli.main(["finetune", "--task", "stdlib-modules", "--method", "bitfit", *FAST,
                     "--steps", "3", "--eval-every", "1"])  # fmt: skip
    assert code == 0
    so_far = "".join(printed_before_step)
    assert "step 1: validation accuracy = " in printed_before_step[1]
    assert "step 2: validation accuracy = " in printed_before_step[2]
    assert "step 3: validation accuracy" not in so_far


def test_compare_shows_one_progress_bar_with_an_eta_over_all_runs(tmp_path, capsys):
    runs = ["--tasks", "stdlib-modules", "--methods", "majority", "bitfit", "--seeds", "2"]
    code, _, err = run(capsys, "compare", "--out", str(tmp_path / "c"), "--in-process", *runs,
                       *FAST)  # fmt: skip
    assert code == 0
    bars = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("all runs")]
    assert bars and "3/3" in bars[-1]  # majority once (no seed), bitfit twice
    assert any("1/3" in b and "<" in b for b in bars)  # elapsed<remaining: the ETA
    assert "[2/3] stdlib-modules / bitfit / seed 0" in err
