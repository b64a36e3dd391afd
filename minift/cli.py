"""The ``minift`` command.

    minift demo                     pretrain a small base (cached), fine-tune it with full, LoRA,
                                    the article's sparse PEFT and BitFit on one task, print the
                                    table and write the plots (a few minutes on two cores)
    minift pretrain                 pretrain the base model (cached, or to --out)
    minift finetune --task T --method M [options]    fine-tune, evaluate, save to --out
        (both: --checkpoint-dir D saves checkpoints, --resume continues the latest bit for bit,
        --stop-at N interrupts, --log F appends a JSON line per step; finetune: --eval-every N)
    minift evaluate --task T --model DIR             evaluate a saved fine-tuned model
    minift generate --model DIR --prompt TEXT         let a saved model write
    minift compare --out DIR        methods × tasks × seeds → results.json, results.md, plots
    minift count                    the trainable-parameter table of every method
    minift bench NAME [options]     run benchmarks/NAME.py of a source checkout (train_step,
                                    generate, gradcheck_time, param_counts, lr_sweep)

Every error is one line naming what was wrong, and a non-zero exit status. Inputs are checked
before any work (a base is loaded or pretrained) and an --out directory is made only when its
results are written, so a failed run leaves nothing half-written behind.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from minift import pipeline
from minift.train import has_checkpoint

DEMO_METHODS = ["base", "majority", "copy", "full", "lora", "sparse", "bitfit"]
# classification (§6.2) from the standard library alone: the setting of the article's claim, where
# LoRA r=8 matches full fine-tuning (benchmarks/results/compare); `--task` picks another
DEMO_TASK = "stdlib-modules"
COMPARE_METHODS = [
    *("base", "majority", "copy", "full", "head", "lora", "dora", "bitfit"),
    *("sparse", "ia3", "adapter", "prompt", "prefix"),
]
METHOD_OPTIONS = {  # command-line option -> config field it sets, for the methods that have it
    "r": "r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "target_modules": "target_modules",
    "density": "density",
    "num_virtual_tokens": "num_virtual_tokens",
    "bottleneck_size": "bottleneck_size",
    "k": "k",
}


def _writable_dir(path: str, option: str = "--out") -> Path:
    """Prove that ``path`` can become a directory and be written, before any work; create nothing.

    The directory itself is made only when the results are written (``_removed_on_failure``),
    so a run that fails leaves no empty directory behind.
    """
    directory = Path(path)
    existing = directory  # the nearest ancestor that exists: where the directory would be made
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option}: cannot write to {directory}: {existing} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ValueError(f"{option}: cannot write to {directory}: {e.strerror or e}") from None
    return directory


@contextlib.contextmanager
def _removed_on_failure(directory: Path):
    """Run the body that writes into ``directory``; if it fails, remove the directories it made.

    What existed before is left alone; a new directory (and any new parents) goes, so a failed
    write leaves nothing half-written.
    """
    first_new = None
    candidate = directory
    while not candidate.exists() and candidate.parent != candidate:
        first_new, candidate = candidate, candidate.parent
    try:
        yield directory
    except BaseException:
        if first_new is not None:
            shutil.rmtree(first_new, ignore_errors=True)
        raise


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _settings(args) -> pipeline.RunSettings:
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr >= 0):
        raise ValueError(f"--lr: expected a finite learning rate >= 0, got {args.lr}")
    return pipeline.RunSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_examples=args.eval_examples,
        threads=args.threads,
        eval_every=getattr(args, "eval_every", 0),
    )


def _base_spec(args) -> pipeline.BaseSpec:
    """The base model the command starts from (each distinct spec is cached on its own)."""
    default = pipeline.BaseSpec()
    return pipeline.BaseSpec(
        steps=getattr(args, "pretrain_steps", None) or default.steps,
        d_model=args.base_d_model,
        n_layer=args.base_n_layer,
        n_head=args.base_n_head,
        seed=getattr(args, "base_seed", default.seed),
    )


def _add_base_options(p):
    default = pipeline.BaseSpec()
    g = p.add_argument_group("the base model (pretrained once per choice, then cached)")
    g.add_argument("--base-d-model", type=_positive_int, default=default.d_model)
    g.add_argument("--base-n-layer", type=_positive_int, default=default.n_layer)
    g.add_argument("--base-n-head", type=_positive_int, default=default.n_head)


def _add_run_options(p, steps):
    p.add_argument(
        "--steps", type=_positive_int, default=steps, help=f"optimizer steps (default {steps})"
    )
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's)")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="train each batch as shares in this many threads (needs threadpoolctl; default 1)",
    )
    p.add_argument(
        "--eval-examples",
        type=_positive_int,
        default=None,
        help="evaluate on the first N test examples",
    )
    p.add_argument(
        "--pretrain-steps",
        type=_positive_int,
        default=None,
        help="steps for the base, if not cached",
    )
    _add_base_options(p)


def _add_checkpoint_options(p):
    g = p.add_argument_group("checkpoints and logs")
    g.add_argument(
        "--checkpoint-dir",
        default=None,
        help="save a checkpoint here every --checkpoint-every steps and at the end (atomically)",
    )
    g.add_argument(
        "--checkpoint-every", type=_positive_int, default=None, help="default: a tenth of --steps"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --checkpoint-dir, bit for bit",
    )
    g.add_argument(
        "--stop-at",
        type=_positive_int,
        default=None,
        help="end at this step, as an interruption would (the schedule stays that of --steps)",
    )
    g.add_argument("--log", default=None, help="append one JSON line of metrics per step")


# ------------------------------------------------------------------------------------------------


def cmd_pretrain(args):
    args.pretrain_steps, args.base_seed = args.steps, args.seed
    spec = _base_spec(args)
    options = _training_options(args, spec.steps)
    if options["resume"]:
        run = pipeline.pretrain_description(spec, pipeline.standard_tokenizer())
        pipeline.check_resume(options["checkpoint_dir"], run, pipeline.pretrain_config(spec))
    if not args.out and pipeline.is_cached(spec):
        print(f"base model cached in {pipeline.base_path(spec)}")
        return
    out = _writable_dir(args.out) if args.out else pipeline.base_path(spec)
    with _removed_on_failure(out):
        _, info = pipeline.pretrain(spec, out, **options)
    if _stopped_early(info["step"], spec.steps, options):
        return
    final = f"; final loss {info['losses'][-1]:.3f}" if info["losses"] else ""
    print(f"saved to {out}{final} after {spec.steps} steps")


def cmd_finetune(args):
    # every input is checked, and the method's config built, before the base is loaded (which may
    # pretrain it first) and before anything is written
    task = pipeline.get_task(args.task)
    method = pipeline.get_method(args.method)
    settings = _settings(args)
    config = _method_config(args, task.kind)
    tok = pipeline.standard_tokenizer()
    spec = _base_spec(args)
    # the config must also fit the base's modules (--target-modules): tried on an untrained
    # model of the base's shape, which takes milliseconds where loading the base may pretrain it
    untrained = pipeline.GPT(spec.model_config(tok.vocab_size))
    untrained = pipeline.prepare_model(
        untrained, task, args.method, 0, tok, args.steps, copy.deepcopy(config)
    )
    options = _training_options(args, args.steps)
    if method.build is None and (
        options["checkpoint_dir"] or options["log_path"] or args.eval_every
    ):
        raise ValueError(
            f"--method: {args.method} does not train: no checkpoints, log or evaluations to make"
        )
    run = pipeline.run_description(task, args.method, args.seed, untrained, spec, tok)
    if options["resume"]:
        train_config = pipeline.train_config(task.kind, args.method, args.seed, settings)
        pipeline.check_resume(options["checkpoint_dir"], run, train_config)
    out = _writable_dir(args.out) if args.out else None
    base = pipeline.load_base(spec)
    model = pipeline.prepare_model(
        base, task, args.method, args.seed, tok, args.steps, config=config
    )
    if method.build is not None:
        result, _ = pipeline.finetune(
            model, task, args.method, args.seed, tok, settings, extra_state={"run": run}, **options
        )
        for scores in result.evals:
            for name, value in scores.items():
                if name != "step":
                    print(f"step {scores['step']}: validation {name} = {value:.4f}")
        if _stopped_early(result.step, args.steps, options):
            return
    metrics = pipeline.evaluate(model, task, tok, limit=args.eval_examples)
    for name, value in metrics.items():
        print(f"{args.task} / {args.method}: {name} = {value:.4f}")
    if out:
        with _removed_on_failure(out):
            pipeline.save_finetuned(model, out, task, args.method)
        print(f"saved to {out}")


def _training_options(args, steps: int) -> dict:
    """--checkpoint-dir, --checkpoint-every, --resume, --stop-at and --log, checked before any
    work: pipeline.finetune's and pipeline.pretrain's keyword arguments."""
    directory = args.checkpoint_dir
    if directory is None:
        for option, value in [
            ("--resume", args.resume),
            ("--stop-at", args.stop_at),
            ("--checkpoint-every", args.checkpoint_every),
        ]:
            if value:
                raise ValueError(f"{option}: needs --checkpoint-dir, the directory of checkpoints")
    else:
        directory = _writable_dir(directory, "--checkpoint-dir")
        has_checkpoints = has_checkpoint(directory)
        if args.resume and not has_checkpoints:
            raise ValueError(f"--resume: no checkpoint in {directory} (no latest.json, no step-*)")
        if has_checkpoints and not args.resume:
            raise ValueError(
                f"--checkpoint-dir: {directory} holds an earlier run's checkpoints; "
                "add --resume to continue it, or choose another directory"
            )
    if args.stop_at is not None and args.stop_at >= steps:
        raise ValueError(f"--stop-at: expected a step before --steps {steps}, got {args.stop_at}")
    return {
        "checkpoint_dir": directory,
        "checkpoint_every": (args.checkpoint_every or max(1, steps // 10)) if directory else 0,
        "resume": args.resume,
        "stop_at": args.stop_at,
        "log_path": _writable_file(args.log, "--log") if args.log else None,
    }


def _writable_file(path: str, option: str) -> Path:
    """A file that can be created or appended to, in a directory that exists; creates nothing."""
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"{option}: {file} is a directory, expected a file")
    if not file.parent.is_dir():
        raise ValueError(f"{option}: cannot write {file}: {file.parent} is not a directory")
    _writable_dir(str(file.parent), option)
    return file


def _stopped_early(step: int, steps: int, options: dict) -> bool:
    """Say so, if --stop-at ended the run before its last step."""
    if step >= steps:
        return False
    print(
        f"stopped at step {step} of {steps}; the checkpoint is in {options['checkpoint_dir']}: "
        "run the same command with --resume to continue (nothing is written to --out before)"
    )
    return True


def _method_config(args, kind: str):
    """The method's config with the command-line options replacing its fields (None: "base")."""
    overrides = {
        f: getattr(args, o) for o, f in METHOD_OPTIONS.items() if getattr(args, o) is not None
    }
    return pipeline.method_config(args.method, kind, args.steps, option_name=_option, **overrides)


def _option(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def cmd_evaluate(args):
    pipeline.check_task(args.task)
    tok = pipeline.standard_tokenizer()
    model = pipeline.load_finetuned(args.model, task=args.task)  # refuses another task's model
    task = pipeline.get_task(args.task)
    for name, value in pipeline.evaluate(model, task, tok, limit=args.eval_examples).items():
        print(f"{args.task}: {name} = {value:.4f}")


def cmd_generate(args):
    import numpy as np

    if args.temperature < 0:
        raise ValueError(f"--temperature: expected >= 0, got {args.temperature}")
    tok = pipeline.standard_tokenizer()
    try:
        ids = tok.encode(args.prompt)  # check the input before any model is built or trained
    except ValueError as e:
        raise ValueError(f"--prompt: {e}") from None
    model = (
        pipeline.load_finetuned(args.model) if args.model else pipeline.load_base(_base_spec(args))
    )
    out = model.generate(
        np.array([ids], dtype=np.int64),
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
    )
    print(tok.decode(out[0].tolist()))


def cmd_compare(args, methods_default=COMPARE_METHODS):
    settings = _settings(args)
    out = _writable_dir(args.out)
    tasks = args.tasks or pipeline.default_tasks()
    methods = args.methods or methods_default
    seeds = list(range(args.seeds))
    records, curves = pipeline.compare(
        tasks,
        methods,
        seeds,
        settings,
        _base_spec(args),
        isolate=not args.in_process,
        workers=getattr(args, "workers", 1),
    )
    command = (
        "minift " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if sys.argv[1:]
        else "minift compare"
    )
    with _removed_on_failure(out):
        written = pipeline.write_results(records, curves, out, command)
    print((out / "results.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written))


def cmd_count(args):
    from minift import counts

    config = pipeline.GPTConfig(
        vocab_size=pipeline.standard_tokenizer().vocab_size,
        block_size=pipeline.BaseSpec().block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
    )
    print(counts.markdown(counts.measure(config), config), end="")


BENCHMARKS = ["train_step", "generate", "gradcheck_time", "param_counts", "lr_sweep", "summary"]


def cmd_bench(args) -> int:
    """``python -m benchmarks.NAME`` in a process of its own, from the checkout minift lives in.

    A child process, because a benchmark removes the OpenBLAS pins before numpy loads
    (benchmarks/_reexec.py) and this process has loaded numpy already.
    """
    import subprocess

    import minift

    root = Path(minift.__file__).resolve().parent.parent
    if not (root / "benchmarks" / f"{args.name}.py").is_file():
        raise FileNotFoundError(
            f"name: the benchmarks live in a source checkout (git clone, then pip install -e .); "
            f"there is no benchmarks/{args.name}.py next to minift in {root}"
        )
    argv = [sys.executable, "-m", f"benchmarks.{args.name}", *args.options]
    return subprocess.run(argv, cwd=root).returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="minift", description="LLM fine-tuning from scratch in NumPy."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="pretrain, fine-tune four ways, print the table (minutes)")
    p.add_argument(
        "--out", default="minift-demo", help="where results and plots go (default ./minift-demo)"
    )
    p.add_argument("--task", default=None, help=f"default: {DEMO_TASK}")
    p.add_argument("--seeds", type=_positive_int, default=2)
    p.add_argument(
        "--in-process",
        action="store_true",
        help="no child process per run (faster, RSS less meaningful)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=min(2, os.cpu_count() or 1),
        help="runs at a time, each process with one BLAS thread (default: 2 where there are 2 "
        "cores)",
    )
    _add_run_options(p, steps=150)

    p = sub.add_parser("pretrain", help="pretrain the base model")
    p.add_argument("--steps", type=_positive_int, default=pipeline.BaseSpec.steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="a directory (default: the cache)")
    _add_base_options(p)
    _add_checkpoint_options(p)

    p = sub.add_parser("finetune", help="fine-tune the base on a task with a method")
    p.add_argument("--task", required=True, help=", ".join(pipeline.TASK_NAMES))
    p.add_argument("--method", required=True, help=", ".join(pipeline.method_names()))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    _add_run_options(p, steps=200)
    _add_checkpoint_options(p)
    p.add_argument(
        "--eval-every",
        type=_positive_int,
        default=0,
        help="score the validation split every N steps (printed, and in --log)",
    )
    g = p.add_argument_group("method options (each applies to the methods that have it)")
    g.add_argument("--r", type=int)
    g.add_argument("--lora-alpha", type=float)
    g.add_argument("--lora-dropout", type=float)
    g.add_argument("--target-modules", nargs="+")
    g.add_argument("--density", type=float)
    g.add_argument("--num-virtual-tokens", type=int)
    g.add_argument("--bottleneck-size", type=int)
    g.add_argument("--k", type=int, help="last-k blocks")

    p = sub.add_parser("evaluate", help="evaluate a saved fine-tuned model")
    p.add_argument("--task", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--eval-examples", type=_positive_int, default=None)

    p = sub.add_parser("generate", help="let a model write")
    p.add_argument("--prompt", required=True)
    p.add_argument("--model", default=None, help="a saved model (default: the pretrained base)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=_positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-steps", type=_positive_int, default=None)
    _add_base_options(p)

    p = sub.add_parser("compare", help="methods × tasks × seeds, with confidence intervals")
    p.add_argument("--out", required=True)
    p.add_argument("--tasks", nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--seeds", type=_positive_int, default=3)
    p.add_argument("--in-process", action="store_true")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="runs at a time, each process with one BLAS thread (default 1)",
    )
    _add_run_options(p, steps=300)

    p = sub.add_parser("count", help="trainable parameters of every method")
    p.add_argument("--d-model", type=_positive_int, default=pipeline.BaseSpec.d_model)
    p.add_argument("--n-layer", type=_positive_int, default=pipeline.BaseSpec.n_layer)
    p.add_argument("--n-head", type=_positive_int, default=pipeline.BaseSpec.n_head)

    p = sub.add_parser(
        "bench",
        help="run a benchmark of a source checkout (python -m benchmarks.NAME)",
        description="Runs python -m benchmarks.NAME with the options that follow; "
        "`minift bench NAME --help` lists them.",
    )
    p.add_argument("name", choices=BENCHMARKS)
    p.add_argument("options", nargs=argparse.REMAINDER, help="passed to the benchmark")

    args = parser.parse_args(argv)
    try:
        if args.command == "bench":
            return cmd_bench(args)
        elif args.command == "demo":
            args.tasks = [args.task or DEMO_TASK]
            args.methods = DEMO_METHODS
            cmd_compare(args)
        else:
            commands = {
                "pretrain": cmd_pretrain,
                "finetune": cmd_finetune,
                "evaluate": cmd_evaluate,
                "generate": cmd_generate,
                "compare": cmd_compare,
                "count": cmd_count,
            }
            commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        print(f"minift {args.command}: error: {e}", file=sys.stderr)
        return 2
    except pipeline.TrainingDivergedError as e:
        print(f"minift {args.command}: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
