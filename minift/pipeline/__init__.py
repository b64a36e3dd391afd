"""From pretraining to a measured comparison: what ``minift demo`` and ``minift compare`` run.

    tasks.py         the tasks (built-in, or the user's JSON Lines file) and each kind's baseline
    pretraining.py   a small character-level GPT on Python's own documentation (minift.data.corpus),
                     cached under the user's cache directory and reused
    finetuning.py    the base model on a task, with ONE method (full, lora, bitfit …: the table of
                     minift.peft.registry), by the ONE training loop (minift.train); a classifier
                     gets a new head ``score``, trained with every method (PEFT's
                     ``modules_to_save``); evaluated on the task's held-out split: accuracy, exact
                     match, chrF
    resume.py        what a run is, written into its checkpoints; refusing to resume another's
    finetuned.py     a fine-tuned model saved whole (finetuned.json + model.safetensors) and loaded
    side_by_side.py  many runs of ``finetune`` or the Trainer, two at a time in processes of
                     their own (the notebooks' seed loops)
    comparison.py    methods × tasks × seeds, each run in a fresh process
    report.py        results.json, results.md (mean ± 95 % CI next to the article's §5.4 claims)
                     and PNG plots

The names below are importable from ``minift.pipeline`` itself, as they were when it was one file.
"""

from minift.data import load_task, standard_tokenizer
from minift.model import GPT, GPTConfig
from minift.peft.registry import METHODS, Method, get_method, method_config, method_names
from minift.pipeline.comparison import RunResult, compare, run_one
from minift.pipeline.finetuned import (
    FINETUNED_JSON,
    FINETUNED_WEIGHTS,
    load_finetuned,
    save_finetuned,
)
from minift.pipeline.finetuning import (
    RunSettings,
    baseline_metrics,
    evaluate,
    finetune,
    max_sequence,
    prepare_model,
    train_config,
)
from minift.pipeline.outputs import Checkpoints
from minift.pipeline.pretraining import (
    BaseSpec,
    base_path,
    cache_dir,
    is_cached,
    load_base,
    pretrain,
    pretrain_config,
    pretrain_description,
)
from minift.pipeline.report import (
    ARTICLE_CLAIMS,
    ARTICLE_ROWS,
    MAIN_METRIC,
    article_comparison_markdown,
    main_metric,
    overview_markdown,
    results_markdown,
    summarize,
    write_plots,
    write_results,
)
from minift.pipeline.resume import check_resume, run_description
from minift.pipeline.side_by_side import FinishedRun, finetune_many, train_many
from minift.pipeline.tasks import (
    BASELINES,
    TASK_NAMES,
    TASK_OPTIONS,
    check_task,
    data_task,
    default_tasks,
    get_task,
)
from minift.train import TrainingDivergedError

__all__ = [
    "ARTICLE_CLAIMS",
    "ARTICLE_ROWS",
    "BASELINES",
    "FINETUNED_JSON",
    "FINETUNED_WEIGHTS",
    "GPT",
    "GPTConfig",
    "MAIN_METRIC",
    "METHODS",
    "Method",
    "BaseSpec",
    "Checkpoints",
    "FinishedRun",
    "RunResult",
    "RunSettings",
    "TASK_NAMES",
    "TASK_OPTIONS",
    "TrainingDivergedError",
    "article_comparison_markdown",
    "base_path",
    "baseline_metrics",
    "cache_dir",
    "check_resume",
    "check_task",
    "compare",
    "data_task",
    "default_tasks",
    "evaluate",
    "finetune",
    "finetune_many",
    "get_method",
    "get_task",
    "is_cached",
    "load_base",
    "load_finetuned",
    "load_task",
    "main_metric",
    "max_sequence",
    "method_config",
    "method_names",
    "overview_markdown",
    "prepare_model",
    "pretrain",
    "pretrain_config",
    "pretrain_description",
    "results_markdown",
    "run_description",
    "run_one",
    "save_finetuned",
    "standard_tokenizer",
    "summarize",
    "train_config",
    "train_many",
    "write_plots",
    "write_results",
]
