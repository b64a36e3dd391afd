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
    minift count                    the trainable-parameter table of every method
    minift bench NAME [options]     run benchmarks/NAME.py of a source checkout (train_step,
                                    generate, gradcheck_time, param_counts, lr_sweep)

Every error is one line naming what was wrong (the option as typed), and exit status 2. Inputs
are checked before any work (a base is loaded or pretrained) and an --out directory is made only
when its results are written, so a failed run leaves nothing half-written behind.
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

    Its parent must exist (as for mkdir without -p): a mistyped parent would otherwise only be
    found after the training it was meant to save. The directory itself is made only when the
    results are written (``_removed_on_failure``), so a run that fails leaves no empty directory.
    """
    directory = Path(path)
    existing = directory  # the nearest ancestor that exists: where the directory would be made
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option}: cannot write to {directory}: {existing} is not a directory")
    if existing not in (directory, directory.parent):
        missing = directory.parent
        raise ValueError(
            f"{option}: cannot write to {directory}: its parent {missing} does not exist"
        )
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


def _settings(args) -> pipeline.RunSettings:
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr >= 0):
        raise ValueError(f"--lr: expected a finite learning rate >= 0, got {args.lr}")
    return pipeline.RunSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_examples=args.eval_examples,
        threads=args.threads,
        eval_every=getattr(args, "eval_every", None) or 0,
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
        default=1,
        help="train each batch as shares in this many threads (needs threadpoolctl)",
    )
    p.add_argument(
        "--eval-examples",
        type=_positive_int,
        default=None,
        help="evaluate on the first N examples of a split (default: all)",
    )
    p.add_argument(
        "--pretrain-steps",
        type=_positive_int,
        default=None,
        help=f"steps for the base, if not cached (default: {pipeline.BaseSpec.steps})",
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
    method = pipeline.get_method(args.method)
    settings = _settings(args)
    spec = _base_spec(args)
    task = _data_task(args, spec.block_size) if args.data else pipeline.get_task(args.task)
    config = _method_config(args, task.kind)
    tok = pipeline.standard_tokenizer()
    # the config must also fit the base's modules (--target-modules): tried on an untrained
    # model of the base's shape, which takes milliseconds where loading the base may pretrain it
    untrained = pipeline.GPT(spec.model_config(tok.vocab_size))
    untrained = pipeline.prepare_model(
        untrained, task, args.method, 0, tok, args.steps, copy.deepcopy(config)
    )
    if args.data and pipeline.max_sequence(untrained) < spec.block_size:
        task = _data_task(args, pipeline.max_sequence(untrained))  # a prompt takes positions
    options = _training_options(args, args.steps)
    if method.build is None and (
        options["checkpoint_dir"] or options["log_path"] or args.eval_every
    ):
        raise ValueError(
            f"--method: {args.method} does not train: no checkpoints, log or evaluations to make"
        )
    if args.save_adapter:
        _check_peft_format(args.method, config)
    run = pipeline.run_description(task, args.method, args.seed, untrained, spec, tok)
    if options["resume"]:
        train_config = pipeline.train_config(task.kind, args.method, args.seed, settings)
        pipeline.check_resume(options["checkpoint_dir"], run, train_config)
    out = _writable_dir(args.out) if args.out else None
    adapter = _writable_dir(args.save_adapter, "--save-adapter") if args.save_adapter else None
    base = pipeline.load_base(spec)
    model = pipeline.prepare_model(
        base, task, args.method, args.seed, tok, args.steps, config=config
    )
    if method.build is not None:
        result, _ = pipeline.finetune(
            model, task, args.method, args.seed, tok, settings, extra_state={"run": run},
            on_validation=_print_validation, **options,
        )  # fmt: skip
        if _stopped_early(result.step, args.steps, options):
            return
    metrics = pipeline.evaluate(model, task, tok, limit=args.eval_examples)
    for name, value in metrics.items():
        print(f"{task.name} / {args.method}: {name} = {value:.4f}")
    if out:
        with _removed_on_failure(out):
            pipeline.save_finetuned(model, out, task, args.method)
        print(f"saved to {out}")
    if adapter:
        with _removed_on_failure(adapter):
            model.save_pretrained(adapter)
        print(f"adapter saved to {adapter} (PEFT's adapter_config.json, adapter_model.safetensors)")


def _print_validation(scores: dict) -> None:
    """One line per validation score, as soon as it is made (above the progress bar)."""
    from tqdm import tqdm

    for name, value in scores.items():
        if name != "step":
            tqdm.write(f"step {scores['step']}: validation {name} = {value:.4f}", file=sys.stdout)


def _data_task(args, block_size: int):
    """--data FILE.jsonl as a Task; its errors name the option, the file and the line."""
    try:
        return pipeline.data_task(args.data, block_size, args.split_seed)
    except ValueError as e:
        raise ValueError(f"--data: {e}") from None


def peft_format_methods() -> list[str]:
    """The methods whose adapter Hugging Face PEFT can read (peft_type is one of PEFT's)."""
    return [
        name
        for name, m in pipeline.METHODS.items()
        if m.build is not None and not m.build("generation", 1).peft_type.startswith("MINIFT_")
    ]


def _check_peft_format(method: str, config) -> None:
    if config is None or config.peft_type.startswith("MINIFT_"):
        raise ValueError(
            f"--save-adapter: method {method} has no PEFT adapter format; the methods that "
            f"have one: {', '.join(peft_format_methods())} (--out saves any method's model)"
        )


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


def _finetuned_info(option: str, directory: str) -> dict:
    """finetuned.json of the folder ``finetune --out`` wrote (its weights are checked on load)."""
    path = Path(directory)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ValueError(f"{option}: {path} {what}; expected a folder written by finetune --out")
    if not (path / pipeline.FINETUNED_JSON).is_file():
        raise ValueError(
            f"{option}: {path} holds no {pipeline.FINETUNED_JSON}; expected a folder written by "
            "finetune --out"
        )
    return pipeline.read_json(path / pipeline.FINETUNED_JSON, "fine-tuned model description")


def cmd_evaluate(args):
    _finetuned_info("--model", args.model)
    tok = pipeline.standard_tokenizer()
    if args.data:
        model = pipeline.load_finetuned(args.model)
        task = _data_task(args, pipeline.max_sequence(model))
        model = pipeline.load_finetuned(args.model, task=task.name)  # refuses another's model
    else:
        task = pipeline.get_task(args.task)
        model = pipeline.load_finetuned(args.model, task=task.name)
    for name, value in pipeline.evaluate(model, task, tok, limit=args.eval_examples).items():
        print(f"{task.name}: {name} = {value:.4f}")


def cmd_generate(args):
    """A fine-tuned model reads <bos> prompt <sep> as it was trained to and writes its answer up
    to <eos>; the pretrained base, which never saw the format, continues the raw prompt."""
    import numpy as np

    from minift.data import decode_answer, encode_prompt

    tok = pipeline.standard_tokenizer()
    try:
        tok.encode(args.prompt)  # check the input before any model is built or trained
    except ValueError as e:
        raise ValueError(f"--prompt: {e}") from None
    if args.model:
        info = _finetuned_info("--model", args.model)
        if info.get("kind") == "classification":
            raise ValueError(
                f"--model: {args.model} holds a classifier (task {info.get('task')}), which "
                "writes no text; use minift classify"
            )
        model = pipeline.load_finetuned(args.model)
        ids, eos_id = encode_prompt(tok, args.prompt), tok.eos_id
    else:
        model = pipeline.load_base(_base_spec(args))
        ids, eos_id = tok.encode(args.prompt), None
    out = model.generate(
        np.array([ids], dtype=np.int64),
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_id=eos_id,
        seed=args.seed,
    )
    if args.model:
        print(decode_answer(tok, out[0, len(ids) :]))
    else:
        print(tok.decode(out[0].tolist()))


def cmd_classify(args):
    """Each text's most likely label and its probability, softmax(logits)[label], one a line."""
    import numpy as np

    from minift.data import Example, encode_classification_batch
    from minift.functional import softmax_forward

    info = _finetuned_info("--model", args.model)
    if info.get("kind") != "classification":
        raise ValueError(
            f"--model: {args.model} holds a {info.get('kind')} model (task {info.get('task')}), "
            "not a classifier; use minift generate"
        )
    tok = pipeline.standard_tokenizer()
    for i, text in enumerate(args.texts, 1):
        try:
            tok.encode(text)
        except ValueError as e:
            raise ValueError(f"TEXT {i}: {str(e).removeprefix('text: ')}") from None
    model = pipeline.load_finetuned(args.model)
    names = info.get("label_names") or [f"label {i}" for i in range(info["num_labels"])]
    examples = [Example(text, 0) for text in args.texts]
    idx, _ = encode_classification_batch(tok, examples, pipeline.max_sequence(model))
    probs, _ = softmax_forward(np.asarray(model.forward(idx), dtype=np.float64))  # [B, labels]
    for text, row in zip(args.texts, probs, strict=True):
        label = int(row.argmax())
        print(f"{names[label]}\t{row[label]:.4f}\t{text}")


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


def build_parser() -> argparse.ArgumentParser:
    """The ``minift`` command's parser: every option described, every default shown."""
    formatter = _HelpFormatter
    description = "LLM fine-tuning from scratch in NumPy."
    parser = _Parser(prog="minift", description=description, formatter_class=formatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help, **kw):
        return sub.add_parser(name, help=help, description=help, formatter_class=formatter, **kw)

    methods = pipeline.method_names()
    p = command("demo", "pretrain, fine-tune four ways, print the table (minutes)")
    p.add_argument("--out", default="minift-demo", help="where results and plots go")
    p.add_argument("--task", default=DEMO_TASK, choices=pipeline.TASK_NAMES, help="the task")
    p.add_argument("--seeds", type=_positive_int, default=2, help="runs per method: seeds 0..N-1")
    _add_compare_options(p, workers=min(2, os.cpu_count() or 1))
    _add_run_options(p, steps=150)

    p = command("pretrain", "pretrain the base model")
    p.add_argument(
        "--steps", type=_positive_int, default=pipeline.BaseSpec.steps, help="optimizer steps"
    )
    p.add_argument("--seed", type=_natural, default=0, help="initialisation and batches")
    p.add_argument("--out", default=None, help="a directory (default: the cache)")
    _add_base_options(p)
    _add_checkpoint_options(p)

    p = command("finetune", "fine-tune the base on a task (or your data) with a method")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", choices=pipeline.TASK_NAMES, help="a built-in task")
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
    g = p.add_argument_group("method options (each applies to the methods that have it)")
    g.add_argument("--r", type=_positive_int, help="LoRA and DoRA rank (default: 8)")
    g.add_argument(
        "--lora-alpha", type=_number(0, low_open=True), help="LoRA scale α: s = α/r (default: 16)"
    )
    g.add_argument(
        "--lora-dropout",
        type=_number(0, 1, high_open=True),
        help="dropout on LoRA's input (default: 0)",
    )
    g.add_argument(
        "--target-modules",
        nargs="+",
        help="names or suffixes of the Linears to adapt (default: the method's; lora: c_attn "
        "attn.c_proj)",
    )
    g.add_argument(
        "--density",
        type=_number(0, 1, low_open=True),
        help="sparse: share of each matrix (default: 0.05)",
    )
    g.add_argument(
        "--num-virtual-tokens", type=_positive_int, help="prompt, prefix: positions (default: 8)"
    )
    g.add_argument(
        "--bottleneck-size", type=_positive_int, help="adapter: bottleneck width (default: 16)"
    )
    g.add_argument("--k", type=_positive_int, help="last-k blocks (default: the method's)")

    p = command("evaluate", "evaluate a saved fine-tuned model on a test split")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", choices=pipeline.TASK_NAMES, help="the task it was tuned for")
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
    p.add_argument(
        "--pretrain-steps",
        type=_positive_int,
        default=None,
        help=f"steps for the base, if not cached (default: {pipeline.BaseSpec.steps})",
    )
    _add_base_options(p)

    p = command("classify", "a fine-tuned classifier's label for each text")
    p.add_argument("--model", required=True, help="a classifier folder from finetune --out")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="the texts to classify")

    p = command("compare", "methods × tasks × seeds, with confidence intervals")
    p.add_argument("--out", required=True, help="where results and plots go")
    p.add_argument(
        "--tasks", nargs="+", default=None, choices=pipeline.TASK_NAMES,
        help="default: babi-qa, kjv-books (or stdlib-modules), en-fr-numbers",
    )  # fmt: skip
    p.add_argument(
        "--methods", nargs="+", default=None,
        choices=[*methods, *pipeline.BASELINES.values()],
        help=f"default: {' '.join(COMPARE_METHODS)}",
    )  # fmt: skip
    p.add_argument("--seeds", type=_positive_int, default=3, help="runs per method: seeds 0..N-1")
    _add_compare_options(p, workers=1)
    _add_run_options(p, steps=300)

    p = command("count", "trainable parameters of every method")
    p.add_argument("--d-model", type=_positive_int, default=pipeline.BaseSpec.d_model, help="width")
    p.add_argument(
        "--n-layer", type=_positive_int, default=pipeline.BaseSpec.n_layer, help="blocks"
    )
    p.add_argument(
        "--n-head", type=_positive_int, default=pipeline.BaseSpec.n_head, help="attention heads"
    )

    p = sub.add_parser(
        "bench",
        help="run a benchmark of a source checkout (python -m benchmarks.NAME)",
        description="Runs python -m benchmarks.NAME with the options that follow; "
        "`minift bench NAME --help` lists them.",
    )
    p.add_argument("name", choices=BENCHMARKS, help="the benchmark")
    p.add_argument("options", nargs=argparse.REMAINDER, help="passed to the benchmark")
    return parser


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
        print(f"minift {args.command}: error: {e}", file=sys.stderr)
        return 2
    except pipeline.TrainingDivergedError as e:
        print(f"minift {args.command}: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
