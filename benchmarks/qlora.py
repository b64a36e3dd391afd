"""QLoRA measured: what NF4 saves and what it costs, on the default base and one task.

On the cached default base (``minift pretrain``'s, d_model 128, 4 blocks), every Linear of the
blocks is quantized to NF4 (block size 64), without and with double quantization, and measured:

- bits per quantized weight (codes and constants, counted from the arrays' bytes: ≈ 4.5 / 4.127);
- the base's bytes before (all float32) and after (the blocks' Linears in NF4, the rest float32);
- the dequantization error of each layer, ‖W − Ŵ‖_F / ‖W‖_F;

then LoRA on the float32 base and LoRA on its NF4 base (``--method qlora``; with
``--double-quant`` also on its double-quantized base) fine-tune the same classification task with
the same seeds (the pipeline's ``finetune`` and ``evaluate``, each method's registered learning
rate), and the test accuracy is reported as the mean with its 95 % interval over the seeds
(minift.stats), and the paired difference qlora − lora per seed with its interval. Run from
the repo root:

    python -m benchmarks.qlora                      # 3 seeds × 2 runs, 40 steps: ~6 min
    python -m benchmarks.qlora --seeds 5 --steps 150 --double-quant --eval-examples 300

It prints and writes (``--out``, default benchmarks/results/qlora) results.json, README.md (the
tables, ready to paste) and qlora.png (the accuracies with their intervals).
"""

from benchmarks._reexec import pins_in_env, reexec_without_openblas_pins

if __name__ == "__main__":
    reexec_without_openblas_pins("benchmarks.qlora")  # before anything imports numpy

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from minift.data import standard_tokenizer  # noqa: E402
from minift.machine import blas_info, blas_line, loadavg, source_line  # noqa: E402
from minift.model import GPT  # noqa: E402
from minift.peft.registry import method_config  # noqa: E402
from minift.pipeline.finetuning import RunSettings, evaluate, finetune, prepare_model  # noqa: E402
from minift.pipeline.pretraining import BaseSpec, load_base  # noqa: E402
from minift.pipeline.tasks import get_task  # noqa: E402
from minift.plots import plot_bars  # noqa: E402
from minift.quant import QuantConfig, quantize_model  # noqa: E402
from minift.stats import mean_ci  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "qlora"
LORA = "lora (float32 base)"
RUNS = {  # label -> (method, options)
    LORA: ("lora", {}),
    "qlora (NF4 base)": ("qlora", {}),
}
DOUBLE_QUANT_RUN = {"qlora (NF4, double quant)": ("qlora", {"double_quant": True})}


def _copy(base: GPT) -> GPT:
    model = GPT(base.config, seed=0, dtype=base.dtype)
    model.load_state_dict(base.state_dict())
    return model


def memory(base: GPT, double_quant: bool) -> dict:
    """Bits per quantized weight, the base's bytes before and after, each layer's error."""
    model = _copy(base)
    before = sum(a.nbytes for a in model.state_dict().values())
    names = quantize_model(model, QuantConfig(double_quant=double_quant))
    after = sum(a.nbytes for a in model.state_dict().values())
    layers, quantized_bytes, quantized_weights = [], 0, 0
    for name in names:
        layer = model.get_submodule(name)
        W = base.get_submodule(name).weight.value.astype(np.float64)
        W_hat = layer.dequantize().astype(np.float64)
        err = float(np.linalg.norm(W - W_hat) / np.linalg.norm(W))
        layers.append({"layer": name, "shape": list(W.shape), "relative_frobenius_error": err})
        quantized_bytes += layer.nbytes()
        quantized_weights += W.size
    return {
        "double_quant": double_quant,
        "bits_per_quantized_weight": 8 * quantized_bytes / quantized_weights,
        "quantized_weights": quantized_weights,
        "base_bytes_before": before,
        "base_bytes_after": after,
        "layers": layers,
    }


def accuracy_runs(base, task_name: str, seeds: int, settings: RunSettings, runs) -> list[dict]:
    task, tok = get_task(task_name), standard_tokenizer()
    records = []
    for seed in range(seeds):
        for label, (method, options) in runs.items():
            config = replace(method_config(method, task.kind, settings.steps), **options)
            model = prepare_model(base, task, method, seed, tok, settings.steps, config)
            t0 = time.perf_counter()
            finetune(model, task, method, seed, tok, settings, progress=False)
            seconds = time.perf_counter() - t0
            scores = evaluate(model, task, tok, "test", settings.eval_examples)
            records.append({"run": label, "method": method, **options, "seed": seed,
                            "train_seconds": seconds, **scores})  # fmt: skip
            print(f"{label}, seed {seed}: accuracy {scores['accuracy']:.4f} ({seconds:.0f} s)")
    return records


def summary(records: list[dict]) -> dict:
    labels = dict.fromkeys(r["run"] for r in records)
    by_run = {label: [r["accuracy"] for r in records if r["run"] == label] for label in labels}
    out = {label: mean_ci(values) for label, values in by_run.items()}
    diffs = {label: mean_ci(np.subtract(values, by_run[LORA]))
             for label, values in by_run.items() if label != LORA}  # fmt: skip
    return {"accuracy": out, "difference_to_lora": diffs}


def markdown(record: dict) -> str:
    m0, m1 = record["memory"]
    lines = [
        "# QLoRA: NF4's memory and error, and LoRA on NF4 against LoRA on float32",
        "",
        f"- {record['source']}",
        f"- {record['blas']}; load average (1 min): {record['loadavg_1min']:.2f}; "
        f"date (UTC): {record['date']}",
        f"- base: the cached default (`minift pretrain`), {record['base']}; task "
        f"{record['task']}, {record['steps']} steps, batch {record['batch_size']}, test accuracy "
        f"on {record['eval_examples'] or 'all'} examples; seeds 0..{record['seeds'] - 1}",
        "",
        "## Memory of the base",
        "",
        "| storage | bits per quantized weight | base bytes | of float32 |",
        "|---|--:|--:|--:|",
        f"| float32 | 32 | {m0['base_bytes_before']:,} | 100 % |",
    ]
    for m in (m0, m1):
        name = "NF4 + double quant" if m["double_quant"] else "NF4"
        share = 100 * m["base_bytes_after"] / m["base_bytes_before"]
        lines.append(f"| {name} | {m['bits_per_quantized_weight']:.3f} | "
                     f"{m['base_bytes_after']:,} | {share:.1f} % |")  # fmt: skip
    lines += [
        "",
        f"(The embedding, tied to the LM head, stays float32: {m0['quantized_weights']:,} of the "
        "base's weights are quantized.)",
        "",
        "## Dequantization error per layer, ‖W − Ŵ‖_F / ‖W‖_F",
        "",
        "| layer | shape | NF4 | NF4 + double quant |",
        "|---|---|--:|--:|",
    ]
    for a, b in zip(m0["layers"], m1["layers"], strict=True):
        errors = a["relative_frobenius_error"], b["relative_frobenius_error"]
        lines.append(f"| {a['layer']} | {a['shape'][0]}×{a['shape'][1]} | {errors[0]:.4f} | "
                     f"{errors[1]:.4f} |")  # fmt: skip
    s = record["summary"]
    lines += [
        "",
        f"## Test accuracy on {record['task']} (mean ± 95 % interval over {record['seeds']} seeds)",
        "",
        "| run | accuracy | − lora's, paired by seed | train seconds (mean) |",
        "|---|--:|--:|--:|",
    ]
    for label, acc in s["accuracy"].items():
        diff = s["difference_to_lora"].get(label)
        secs = np.mean([r["train_seconds"] for r in record["runs"] if r["run"] == label])
        lines.append(f"| {label} | {acc.format(3)} | {diff.format(3) if diff else '—'} | "
                     f"{secs:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.qlora",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--task", default="stdlib-modules")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-examples", type=int, default=100)
    p.add_argument(
        "--double-quant",
        action="store_true",
        help="also fine-tune on the double-quantized base (a third run per seed)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.seeds < 3:
        p.error(f"--seeds: expected at least 3 (an interval needs them), got {args.seeds}")
    spec = BaseSpec()
    base = load_base(spec, progress=False)
    settings = RunSettings(steps=args.steps, batch_size=args.batch_size,
                           eval_examples=args.eval_examples)  # fmt: skip
    t0 = time.perf_counter()
    runs = accuracy_runs(
        base,
        args.task,
        args.seeds,
        settings,
        {**RUNS, **(DOUBLE_QUANT_RUN if args.double_quant else {})},
    )
    record = {
        "base": f"d_model {spec.d_model}, {spec.n_layer} blocks, {spec.n_head} heads",
        "task": args.task,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "eval_examples": args.eval_examples,
        "seeds": args.seeds,
        "memory": [memory(base, False), memory(base, True)],
        "runs": runs,
        "summary": summary(runs),
        "seconds": time.perf_counter() - t0,
        "source": source_line(),
        "blas": blas_line(blas_info()),
        "openblas_pins_in_env": pins_in_env(),
        "loadavg_1min": loadavg(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    md = markdown(record)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    s = record["summary"]
    plot_bars({k: v.mean for k, v in s["accuracy"].items()}, args.out / "qlora.png",
              ylabel=f"test accuracy, {args.task}",
              title=f"LoRA on a float32 base and on its NF4 base: mean and 95 % interval over "
              f"{args.seeds} seeds, {args.steps} steps",
              errors={k: v.half_width for k, v in s["accuracy"].items()})  # fmt: skip
    as_json = {**record, "summary": {k: {label: vars(ci) for label, ci in v.items()}
                                     for k, v in s.items()}}  # fmt: skip
    (args.out / "README.md").write_text(md, encoding="utf-8")
    (args.out / "results.json").write_text(json.dumps(as_json, indent=2) + "\n", "utf-8")
    return record


if __name__ == "__main__":
    main()
