"""The ``minift`` command.

    minift demo                     pretrain a small base (cached), fine-tune it with full, LoRA,
                                    the article's sparse PEFT and BitFit on one task, print the
                                    table and write the plots (a few minutes on two cores)
    minift pretrain                 pretrain the base model (cached, or to --out)
    minift finetune --task T --method M [options]    fine-tune, evaluate, save to --out
        (both: --checkpoint-dir D saves checkpoints, --resume continues the latest bit for bit,
        --stop-at N interrupts, --log F appends a JSON line per step; finetune: --eval-every N)
        (finetune: --data FILE.jsonl for your own examples instead of --task, --save-adapter D
        for the adapter alone in PEFT's format)
    minift evaluate --task T --model DIR             evaluate a saved fine-tuned model
    minift generate --model DIR --prompt TEXT         let a saved model write
    minift classify --model DIR TEXT...              a fine-tuned classifier's label for each text
    minift compare --out DIR        methods × tasks × seeds → results.json, results.md, plots
    minift count                    what each method trains, as finetune trains it
    minift bench NAME [options]     run benchmarks/NAME.py of a source checkout (train_step,
                                    generate, gradcheck_time, param_counts, lr_sweep)

Each command is a few lines over one function of the library (minift.pipeline, minift.counts);
the methods, their options and their defaults come from minift.peft.registry. Every error is one
line naming what was wrong (the option as typed: the library names the argument, ``_as_typed``
shows its flag), and exit status 2. Inputs are checked before any work (a base is loaded or
pretrained) and an --out directory is made only when its results are written, so a failed run
leaves nothing half-written behind.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from minift import counts
from minift.data import TASK_NAMES, standard_tokenizer
from minift.machine import measured_run, usable_cores
from minift.peft.registry import METHODS, Option, command_line_options
from minift.pipeline.comparison import compare
from minift.pipeline.finetuning import RunSettings
from minift.pipeline.inference import classify_texts, evaluate_saved, generate_text
from minift.pipeline.job import finetune_job, peft_format_methods, pretrain_job
from minift.pipeline.outputs import (
    Checkpoints,
    removed_on_failure,
    writable_dir,
    writable_file,
)
from minift.pipeline.pretraining import BaseSpec
from minift.pipeline.report import write_results
from minift.pipeline.tasks import BASELINES, default_tasks
from minift.train import TrainingDivergedError, has_checkpoint

DEMO_METHODS = ["base", "majority", "copy", "full", "lora", "sparse", "bitfit"]
# classification (§6.2) from the standard library alone: the setting of the article's claim, where
# LoRA r=8 matches full fine-tuning (benchmarks/results/compare); `--task` picks another
DEMO_TASK = "stdlib-modules"


def compare_methods() -> list[str]:
    """compare's default methods: base, the baselines, then every registered method so marked."""
    chosen = [name for name, m in METHODS.items() if m.compare and m.trains]
    return ["base", *BASELINES.values(), *chosen]


def _integer(minimum: int):
    """An argparse type: an integer >= minimum, its errors in the words a person reads."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            wanted = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected ≥ {minimum}, got {value}")
        return value

    return parse


_positive_int = _integer(1)
_natural = _integer(0)


def _number(low: float, high: float = math.inf, low_open=False, high_open=False):
    """An argparse type: a finite number in the interval [low, high] (ends open if asked)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value < low or (low_open and value == low)
        above = value > high or (high_open and value == high)
        if not math.isfinite(value) or below or above:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text}")
        return value

    return parse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every default shown, except where the help says it in words or there is none."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in action.help:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that name the option as typed, raised to ``main``."""

    def error(self, message):
        raise _UsageError(f"{self.prog}: error: {message.removeprefix('argument ')}")


class _UsageError(Exception):
    pass


def _settings(args) -> RunSettings:
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr >= 0):
        raise ValueError(f"--lr: expected a finite learning rate >= 0, got {args.lr}")
    return RunSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_examples=args.eval_examples,
        threads=args.threads,
        eval_every=getattr(args, "eval_every", None) or 0,
    )


def _base_spec(args) -> BaseSpec:
    """The base model the command starts from (each distinct spec is cached on its own)."""
    default = BaseSpec()
    return BaseSpec(
        steps=getattr(args, "pretrain_steps", None) or default.steps,
        d_model=args.base_d_model,
        n_layer=args.base_n_layer,
        n_head=args.base_n_head,
        seed=getattr(args, "base_seed", default.seed),
    )


def _add_base_options(p, pretrain_steps: bool):
    """The base model's shape; with ``pretrain_steps``, --pretrain-steps too, for the commands
    that may pretrain the base on the way (``pretrain`` itself has --steps)."""
    default = BaseSpec()
    g = p.add_argument_group("the base model (pretrained once per choice, then cached)")
    if pretrain_steps:
        g.add_argument(
            "--pretrain-steps",
            type=_positive_int,
            default=None,
            help=f"steps for the base, if not cached (default: {default.steps})",
        )
    g.add_argument("--base-d-model", type=_positive_int, default=default.d_model, help="width")
    g.add_argument("--base-n-layer", type=_positive_int, default=default.n_layer, help="blocks")
    g.add_argument(
        "--base-n-head", type=_positive_int, default=default.n_head, help="attention heads"
    )


def _add_run_options(p, steps):
    p.add_argument("--steps", type=_positive_int, default=steps, help="optimizer steps")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="examples per step")
    p.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: the method's, swept)"
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="train each batch as shares in this many threads; 1: the plain loop "
        "(default: 2 where two cores are free, else 1; 1 in each of compare's workers)",
    )
    p.add_argument(
        "--eval-examples",
        type=_positive_int,
        default=None,
        help="evaluate on the first N examples of a split (default: all)",
    )
    _add_base_options(p, pretrain_steps=True)


def _add_checkpoint_options(p):
    g = p.add_argument_group("checkpoints and logs")
    g.add_argument(
        "--checkpoint-dir",
        default=None,
        help="save a checkpoint here every --checkpoint-every steps and at the end (atomically)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=None,
        help="steps between checkpoints (default: a tenth of --steps)",
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
    pretrain_job(spec, out=args.out, checkpoints=_training_options(args, spec.steps))


def cmd_finetune(args):
    finetune_job(
        args.method, _settings(args), _base_spec(args), task=args.task, data=args.data,
        split_seed=args.split_seed, seed=args.seed, options=_method_options(args),
        checkpoints=_training_options(args, args.steps), out=args.out,
        save_adapter=args.save_adapter, on_validation=_print_validation,
    )  # fmt: skip


def _print_validation(scores: dict) -> None:
    """One line per validation score, as soon as it is made (above the progress bar)."""
    from tqdm import tqdm

    for name, value in scores.items():
        if name != "step":
            tqdm.write(f"step {scores['step']}: validation {name} = {value:.4f}", file=sys.stdout)


def _training_options(args, steps: int) -> Checkpoints:
    """--checkpoint-dir, --checkpoint-every, --resume, --stop-at and --log, checked before any
    work: what a pretrain or finetune run saves as it goes."""
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
        directory = writable_dir(directory, "--checkpoint-dir")
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
    return Checkpoints(
        checkpoint_dir=directory,
        checkpoint_every=(args.checkpoint_every or max(1, steps // 10)) if directory else 0,
        resume=args.resume,
        stop_at=args.stop_at,
        log_path=writable_file(args.log, "--log") if args.log else None,
    )


def _method_options(args) -> dict:
    """The method options given on the command line, by the config field each sets."""
    return {f: getattr(args, f) for f in command_line_options() if getattr(args, f) is not None}


def cmd_evaluate(args):
    name, metrics = evaluate_saved(
        args.model, task=args.task, data=args.data, split_seed=args.split_seed,
        limit=args.eval_examples,
    )  # fmt: skip
    for metric, value in metrics.items():
        print(f"{name}: {metric} = {value:.4f}")


def cmd_generate(args):
    base = None if args.model else _base_spec(args)
    print(generate_text(args.prompt, model=args.model, base=base,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, seed=args.seed))  # fmt: skip


def cmd_classify(args):
    for text, (label, p) in zip(args.texts, classify_texts(args.model, args.texts), strict=True):
        print(f"{label}\t{p:.4f}\t{text}")


def cmd_compare(args):
    settings = _settings(args)
    out = writable_dir(args.out, "--out")
    tasks = args.tasks or default_tasks()
    methods = args.methods or compare_methods()
    seeds = list(range(args.seeds))
    with measured_run() as machine:  # described as the runs begin: other work shows then
        records, curves = compare(tasks, methods, seeds, settings, _base_spec(args),
                                  isolate=not args.in_process,
                                  workers=getattr(args, "workers", 1))  # fmt: skip
    command = (
        "minift " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if sys.argv[1:]
        else "minift compare"
    )
    with removed_on_failure(out):
        written = write_results(records, curves, out, command, machine)
    print((out / "results.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written))


def cmd_count(args):
    spec = BaseSpec(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head)
    config = spec.model_config(standard_tokenizer().vocab_size)  # the base finetune would load
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


def build_parser() -> argparse.ArgumentParser:
    """The ``minift`` command's parser: every option described, every default shown."""
    formatter = _HelpFormatter
    description = "LLM fine-tuning from scratch in NumPy."
    parser = _Parser(prog="minift", description=description, formatter_class=formatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help, **kw):
        return sub.add_parser(name, help=help, description=help, formatter_class=formatter, **kw)

    methods = list(METHODS)
    p = command("demo", "pretrain, fine-tune four ways, print the table (minutes)")
    p.add_argument("--out", default="minift-demo", help="where results and plots go")
    p.add_argument("--task", default=DEMO_TASK, choices=TASK_NAMES, help="the task")
    # 3 seeds, not 2: 95 % intervals of t(2)=4.3 SEs, not t(1)=12.7. 60 steps, not 80: the picture
    # of 80 (6 seeds on stdlib-modules, 4 on en-fr-numbers: see git log) in 13 s less
    p.add_argument("--seeds", type=_positive_int, default=3, help="runs per method: seeds 0..N-1")
    _add_compare_options(p, workers=min(2, usable_cores()))
    _add_run_options(p, steps=60)

    p = command("pretrain", "pretrain the base model")
    p.add_argument("--steps", type=_positive_int, default=BaseSpec.steps, help="optimizer steps")
    p.add_argument("--seed", type=_natural, default=0, help="initialisation and batches")
    p.add_argument("--out", default=None, help="a directory (default: the cache)")
    _add_base_options(p, pretrain_steps=False)
    _add_checkpoint_options(p)

    p = command("finetune", "fine-tune the base on a task (or your data) with a method")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", choices=TASK_NAMES, help="a built-in task")
    what.add_argument(
        "--data",
        metavar="FILE.jsonl",
        help='your examples, one JSON object a line: {"prompt", "completion"} to generate, '
        '{"text", "label"} to classify (see minift.data.userdata)',
    )
    p.add_argument("--method", required=True, choices=methods, help="the fine-tuning method")
    p.add_argument(
        "--split-seed",
        type=_natural,
        default=0,
        help="with --data: shuffles the file before a tenth each is cut off for test and "
        "validation",
    )
    p.add_argument(
        "--seed", type=_natural, default=0, help="the new head's init, dropout and batches"
    )
    p.add_argument(
        "--out",
        default=None,
        help="save the whole fine-tuned model here (finetuned.json + model.safetensors), for "
        "evaluate, generate and classify",
    )
    p.add_argument(
        "--save-adapter",
        metavar="DIR",
        default=None,
        help="save only the adapter, in Hugging Face PEFT's format (adapter_config.json + "
        f"adapter_model.safetensors); methods: {', '.join(peft_format_methods())}",
    )
    _add_run_options(p, steps=200)
    _add_checkpoint_options(p)
    p.add_argument(
        "--eval-every",
        type=_positive_int,
        default=None,
        help="score the validation split every N steps, printed as it is made (and in --log)",
    )
    _add_method_options(p)

    p = command("evaluate", "evaluate a saved fine-tuned model on a test split")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", choices=TASK_NAMES, help="the task it was tuned for")
    what.add_argument("--data", metavar="FILE.jsonl", help="the file it was fine-tuned on")
    p.add_argument("--split-seed", type=_natural, default=0, help="as given to finetune")
    p.add_argument("--model", required=True, help="a folder written by finetune --out")
    p.add_argument(
        "--eval-examples",
        type=_positive_int,
        default=None,
        help="the first N test examples (default: all)",
    )

    p = command("generate", "let a model write")
    p.add_argument("--prompt", required=True, help="the text to answer (or, base: continue)")
    p.add_argument(
        "--model",
        default=None,
        help="a generation model from finetune --out, given <bos> prompt <sep> as in training "
        "and stopped at <eos> (default: the pretrained base, given the raw prompt)",
    )
    p.add_argument("--max-new-tokens", type=_positive_int, default=200, help="at most this many")
    p.add_argument(
        "--temperature", type=_number(0), default=0.8, help="0: greedy; higher: more random"
    )
    p.add_argument(
        "--top-k", type=_positive_int, default=None, help="sample among the k most likely"
    )
    p.add_argument(
        "--top-p",
        type=_number(0, 1, low_open=True),
        default=None,
        help="sample among the fewest most likely tokens of mass >= p (nucleus sampling)",
    )
    p.add_argument("--seed", type=_natural, default=0, help="the sampling's random generator")
    _add_base_options(p, pretrain_steps=True)

    p = command("classify", "a fine-tuned classifier's label for each text")
    p.add_argument("--model", required=True, help="a classifier folder from finetune --out")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="the texts to classify")

    p = command("compare", "methods × tasks × seeds, with confidence intervals")
    p.add_argument("--out", required=True, help="where results and plots go")
    p.add_argument(
        "--tasks", nargs="+", default=None, choices=TASK_NAMES,
        help="default: babi-qa, kjv-books (or stdlib-modules), en-fr-numbers",
    )  # fmt: skip
    p.add_argument(
        "--methods", nargs="+", default=None,
        choices=[*methods, *BASELINES.values()],
        help=f"default: {' '.join(compare_methods())}",
    )  # fmt: skip
    p.add_argument("--seeds", type=_positive_int, default=3, help="runs per method: seeds 0..N-1")
    _add_compare_options(p, workers=1)
    _add_run_options(p, steps=300)

    p = command("count", "trainable parameters of every method")
    p.add_argument("--d-model", type=_positive_int, default=BaseSpec.d_model, help="width")
    p.add_argument("--n-layer", type=_positive_int, default=BaseSpec.n_layer, help="blocks")
    p.add_argument("--n-head", type=_positive_int, default=BaseSpec.n_head, help="attention heads")

    p = sub.add_parser(
        "bench",
        help="run a benchmark of a source checkout (python -m benchmarks.NAME)",
        description="Runs python -m benchmarks.NAME with the options that follow; "
        "`minift bench NAME --help` lists them.",
    )
    p.add_argument("name", choices=BENCHMARKS, help="the benchmark")
    p.add_argument("options", nargs=argparse.REMAINDER, help="passed to the benchmark")
    return parser


def _add_method_options(p):
    """One option per config field that some method takes (minift.peft.registry), its help
    naming those methods and their defaults."""
    g = p.add_argument_group("method options (each applies to the methods that have it)")
    for option in command_line_options().values():
        defaults = []
        for method in METHODS.values():
            if option in method.options:
                config = method.build("generation", 1)
                value = getattr(config, option.field)
                if value is None and option.field == "target_modules":
                    value = list(config.default_target_modules)
                if isinstance(value, (list, tuple)):
                    value = " ".join(value) or "every module"
                if value is None:
                    value = "off"  # an option that is off unless given (LoRA+)
                defaults.append(f"{method.name}: {value}")
        g.add_argument(
            option.flag,
            dest=option.field,
            type=_option_type(option),
            nargs="+" if option.many else None,
            help=f"{option.help} (default: {'; '.join(defaults)})",
        )


def _option_type(option: Option):
    """The argparse type that reads a value of ``option``'s type in its bounds."""
    if option.type is int:
        return _integer(int(option.low)) if option.low is not None else int
    if option.type is float:
        low = -math.inf if option.low is None else option.low
        high = math.inf if option.high is None else option.high
        return _number(low, high, option.low_open, option.high_open)
    return option.type


def _add_compare_options(p, workers: int):
    p.add_argument(
        "--in-process",
        action="store_true",
        help="no child process per run (faster, RSS less meaningful)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=workers,
        help="runs at a time, each process with one BLAS thread",
    )


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        if args.command == "bench":
            return cmd_bench(args)
        elif args.command == "demo":
            args.tasks = [args.task]
            args.methods = DEMO_METHODS
            cmd_compare(args)
        else:
            commands = {
                "pretrain": cmd_pretrain,
                "finetune": cmd_finetune,
                "evaluate": cmd_evaluate,
                "generate": cmd_generate,
                "classify": cmd_classify,
                "compare": cmd_compare,
                "count": cmd_count,
            }
            commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        print(f"minift {args.command}: error: {_as_typed(str(e), parser, args)}", file=sys.stderr)
        return 2
    except TrainingDivergedError as e:
        print(f"minift {args.command}: {e}", file=sys.stderr)
        return 3
    return 0


def _as_typed(message: str, parser, args) -> str:
    """The library names the argument an error is about ("save_adapter: …"); the command line
    names the flag, as it was typed ("--save-adapter: …")."""
    name, sep, rest = message.partition(": ")
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {
        action.dest: action.option_strings[0]
        for action in commands.choices[args.command]._actions
        if action.option_strings
    }
    return f"{flags[name]}: {rest}" if sep and name in flags else message


if __name__ == "__main__":
    sys.exit(main())
