"""Each figure: a real PNG whose drawn data equal the inputs, saved atomically; bad input named."""

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

import minift.files
from minift.plots import (
    figure_data,
    plot_bars,
    plot_lines_with_intervals,
    plot_loss_curves,
    plot_metric_vs_params,
    plot_parameter_count_panels,
    plot_parameter_counts,
    plot_singular_values,
)

NAN = float("nan")

ROWS = [
    {
        "task": "copy",
        "method": "full",
        "trainable_params": 120_000,
        "mean": 0.95,
        "half_width": 0.02,
    },
    {"task": "copy", "method": "lora", "trainable_params": 4_096, "mean": 0.91, "half_width": 0.04},
    {"task": "copy", "method": "bitfit", "trainable_params": 900, "mean": 0.70, "half_width": NAN},
    {
        "task": "sum",
        "method": "full",
        "trainable_params": 120_000,
        "mean": 0.81,
        "half_width": 0.05,
    },
    {"task": "sum", "method": "lora", "trainable_params": 4_096, "mean": 0.78, "half_width": 0.03},
]


def assert_png(path, fig):
    """A whole PNG at ``path``, as large as the figure, and nothing else left in its directory."""
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 5_000  # an empty canvas compresses to far less
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == tuple(round(v) for v in fig.get_size_inches() * 120)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def legends(fig):
    """Every legend of the figure: the figure's own, then each axes'."""
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]


def undrawn_tick_labels(fig) -> set[int]:
    """The tick labels matplotlib keeps but does not draw: those of ticks outside the view."""
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo * (1 - 1e-9) <= tick.get_loc() <= hi * (1 + 1e-9) + 1e-12:
                    undrawn |= {id(tick.label1), id(tick.label2)}
    return undrawn


def method_lines(ax):
    """The lines labelled by the caller (errorbar caps carry labels starting with '_')."""
    return {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}


def test_metric_vs_params(tmp_path):
    path = tmp_path / "new" / "dir" / "metric.png"  # parents do not exist yet
    fig = plot_metric_vs_params(ROWS, path, metric_name="accuracy")
    assert isinstance(fig, Figure)
    assert_png(path, fig)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["task: copy", "task: sum"]
    for ax in axes:
        task = ax.get_title().removeprefix("task: ")
        rows = {r["method"]: r for r in ROWS if r["task"] == task}
        lines = method_lines(ax)
        assert set(lines) == set(rows)
        for method, line in lines.items():
            assert line.get_xdata().tolist() == [rows[method]["trainable_params"]]
            assert line.get_ydata().tolist() == [rows[method]["mean"]]
        assert sorted(t.get_text() for t in ax.texts) == sorted(rows)  # each point named
        # one vertical error bar per finite half width, from mean − hw to mean + hw
        segments = [s for c in ax.containers for s in c.lines[2][0].get_segments()]
        want = sorted(
            (r["trainable_params"], r["mean"] - r["half_width"], r["mean"] + r["half_width"])
            for r in rows.values()
            if not math.isnan(r["half_width"])
        )
        got = sorted((s[0, 0], s[0, 1], s[1, 1]) for s in segments)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert ax.get_xscale() == "log"
        assert "accuracy" in ax.get_ylabel()


def test_loss_curves(tmp_path):
    rng = np.random.default_rng(0)
    curves = {
        "lora": (2.0 * np.exp(-np.arange(30) / 10) + 0.1 * rng.random((3, 30))).tolist(),
        "full": [np.linspace(2.0, 0.5, 20).tolist()],  # one seed, fewer steps: no band
    }
    path = tmp_path / "loss.png"
    fig = plot_loss_curves(curves, path, title="Loss", log_y=True)
    assert_png(path, fig)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_title() == "Loss"
    lora, full = ax.lines
    L = np.array(curves["lora"])
    np.testing.assert_array_equal(lora.get_xdata(), np.arange(1, 31))  # steps 1 … T
    np.testing.assert_allclose(lora.get_ydata(), L.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(full.get_ydata(), curves["full"][0], rtol=1e-12)
    assert len(ax.collections) == 1  # the band of "lora" only
    vertices = ax.collections[0].get_paths()[0].vertices
    for step, lo, hi in zip(range(1, 31), L.min(axis=0), L.max(axis=0), strict=True):
        ys = vertices[vertices[:, 0] == step, 1]
        assert np.isclose(ys, lo, rtol=1e-12).any() and np.isclose(ys, hi, rtol=1e-12).any()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "lora (mean of 3 seeds)",
        "full (mean of 1 seed)",
    ]
    assert ax.get_legend().get_title().get_text() == "shaded: min–max over seeds"


def test_bars(tmp_path):
    values = {"full": 124_416, "lora": 4_096, "bitfit": 512, "ia3": 96}
    errors = {"full": 1000.0, "lora": NAN, "bitfit": 0.0, "ia3": 3.0}
    path = tmp_path / "bars.png"
    fig = plot_bars(values, path, "trainable parameters (count)", "Parameters", True, errors)
    assert_png(path, fig)
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == list(values.values())
    assert [t.get_text() for t in ax.get_xticklabels()] == list(values)
    assert [t.get_text() for t in ax.texts] == ["124k", "4,096", "512", "96"]
    assert ax.get_yscale() == "log" and ax.get_title() == "Parameters"
    (container,) = ax.containers[1:]  # [0] holds the bars, [1] the error bars
    segments = container.lines[2][0].get_segments()
    assert len(segments) == 3  # the nan one has no bar
    np.testing.assert_allclose(segments[0], [[0, 123_416], [0, 125_416]])


def test_bars_linear_with_negative_value(tmp_path):
    fig = plot_bars({"a": 0.5, "b": -0.25}, tmp_path / "b.png", "change (points)", "Δ")
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [0.5, -0.25]
    assert ax.get_yscale() == "linear"


def test_parameter_counts(tmp_path):
    series = {
        "full": ([256, 64, 128], [1e6, 6e4, 2.5e5]),  # drawn in order of increasing x
        "lora": ([64, 128, 256], [2048, 4096, 8192]),
    }
    path = tmp_path / "counts.png"
    fig = plot_parameter_counts(series, path, "d_model (width)", "Trainable parameters")
    assert_png(path, fig)
    ax = fig.axes[0]
    full, lora = ax.lines
    assert full.get_xdata().tolist() == [64, 128, 256]
    assert full.get_ydata().tolist() == [6e4, 2.5e5, 1e6]
    assert lora.get_ydata().tolist() == [2048, 4096, 8192]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert [t.get_text() for t in legends(fig)[0].get_texts()] == ["full", "lora"]


def test_singular_values(tmp_path):
    rng = np.random.default_rng(0)
    B, A = rng.standard_normal((32, 4)), rng.standard_normal((4, 24))
    low_rank = np.linalg.svd(B @ A, compute_uv=False)  # 4 large values, then ~1e-15
    spectra = {"lora r=4": low_rank, "with zeros": [0.0, 3.0, 1.0, 0.0, 2.0]}
    path = tmp_path / "sv.png"
    fig = plot_singular_values(spectra, path, "Singular values of ΔW")
    assert_png(path, fig)
    ax = fig.axes[0]
    lr, z = ax.lines
    np.testing.assert_array_equal(lr.get_ydata(), np.sort(low_rank)[::-1])
    np.testing.assert_array_equal(lr.get_xdata(), np.arange(1, 25))
    assert z.get_ydata().tolist() == [3.0, 2.0, 1.0, 0.0, 0.0]
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "lora r=4",
        "with zeros (2 exact zeros not shown)",
    ]


def test_failing_savefig_leaves_nothing(tmp_path, monkeypatch):
    def broken_savefig(self, *args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plot_bars({"a": 1.0}, tmp_path / "bars.png", "y", "t")
    assert list(tmp_path.iterdir()) == []


def test_failing_rename_keeps_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "bars.png"
    path.write_bytes(b"old figure")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(minift.files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="bars.png"):
        plot_bars({"a": 1.0}, path, "y", "t")
    assert path.read_bytes() == b"old figure"
    assert [p.name for p in tmp_path.iterdir()] == ["bars.png"]


def test_overwrites_existing_file(tmp_path):
    path = tmp_path / "bars.png"
    path.write_bytes(b"old figure")
    fig = plot_bars({"a": 1.0, "b": 2.0}, path, "y", "t")
    assert_png(path, fig)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: plot_metric_vs_params([], p), "rows is empty"),
        (lambda p: plot_metric_vs_params([{"task": "t"}], p), r"rows\[0\] is missing"),
        (
            lambda p: plot_metric_vs_params([{**ROWS[0], "trainable_params": 0}], p),
            r"rows\[0\]\['trainable_params'\] must be finite and > 0",
        ),
        (
            lambda p: plot_metric_vs_params([ROWS[0], {**ROWS[1], "half_width": -1.0}], p),
            r"rows\[1\]\['half_width'\] must be ≥ 0 or nan",
        ),
        (lambda p: plot_loss_curves({}, p), "curves is empty"),
        (lambda p: plot_loss_curves({"lora": []}, p), r"curves\['lora'\] must be a non-empty"),
        (
            lambda p: plot_loss_curves({"lora": [[1.0, 2.0], [1.0]]}, p),
            r"curves\['lora'\]: every seed must have the same number of steps, got \[2, 1\]",
        ),
        (
            lambda p: plot_loss_curves({"lora": [[1.0, NAN]]}, p),
            r"curves\['lora'\]\[0\] must be finite, got nan at index 1",
        ),
        (
            lambda p: plot_loss_curves({"lora": [[1.0, 0.0]]}, p, log_y=True),
            r"curves\['lora'\]\[0\] must be finite and > 0",
        ),
        (lambda p: plot_bars({}, p, "y", "t"), "values is empty"),
        (lambda p: plot_bars({"a": 0.0}, p, "y", "t", log=True), "values must be finite and > 0"),
        (
            lambda p: plot_bars({"a": 1.0, "b": 2.0}, p, "y", "t", errors={"a": 0.1}),
            r"errors must have the same labels as values: missing \['b'\]",
        ),
        (
            lambda p: plot_bars({"a": 1.0}, p, "y", "t", errors={"a": "big"}),
            r"errors\['a'\] must be ≥ 0 or nan",
        ),
        (lambda p: plot_parameter_counts({}, p, "x", "t"), "series is empty"),
        (
            lambda p: plot_parameter_counts({"lora": ([1, 2, 3], [1, 2])}, p, "x", "t"),
            r"series\['lora'\]: xs and ys must have the same length, got 3 and 2",
        ),
        (
            lambda p: plot_parameter_counts({"lora": [1, 2, 3]}, p, "x", "t"),
            r"series\['lora'\] must be a pair \(xs, ys\)",
        ),
        (
            lambda p: plot_parameter_count_panels({"small": [{"lora": ([1], [1])}]}, p, "t"),
            r"panels\['small'\] must be a pair \(series, xlabel\)",
        ),
        (
            lambda p: plot_parameter_counts({"lora": ([1], [1])}, p, "x", "t", guides=(0.01, 0)),
            "guides must be finite and > 0 .log axis., got 0.0 at index 1",
        ),
        (
            lambda p: plot_parameter_count_panels(
                {"small": ({"lora": ([1], [1])}, "x")}, p, "t", points={"large": ("7B", {})}
            ),
            r"points\['large'\]: expected a panel's subtitle \(one of \['small'\]\) and a label",
        ),
        (
            lambda p: plot_parameter_count_panels(
                {"small": ({"lora": ([1], [1])}, "x")},
                p,
                "t",
                points={"small": ("small", {"lora": ([2], [1])})},
            ),
            r"points\['small'\]: .* a label of its own, got 'small'",
        ),
        (
            lambda p: plot_parameter_count_panels(
                {"small": ({"lora": ([1], [1])}, "x")},
                p,
                "t",
                points={"small": ("7B", {"lora": ([2], [0])})},
            ),
            r"series\['lora'\] ys must be finite and > 0",
        ),
        (lambda p: plot_singular_values({}, p, "t"), "spectra is empty"),
        (lambda p: plot_lines_with_intervals({}, p, "x", "y", "t"), "curves is empty"),
        (
            lambda p: plot_lines_with_intervals({"lora": ([1, 2], [0.5, 0.6])}, p, "x", "y", "t"),
            r"curves\['lora'\] must be \(xs, means, half_widths\)",
        ),
        (
            lambda p: plot_lines_with_intervals(
                {"lora": ([1, 2], [0.5], [0, 0])}, p, "x", "y", "t"
            ),
            r"curves\['lora'\]: xs, means and half_widths differ in length",
        ),
        (
            lambda p: plot_lines_with_intervals(
                {"lora": ([0, 2], [0.5, 1], [0, 0])}, p, "x", "y", "t"
            ),
            r"curves\['lora'\] xs must be finite and > 0",
        ),
        (
            lambda p: plot_singular_values({"dW": [1.0, -0.5]}, p, "t"),
            r"spectra\['dW'\] must be ≥ 0",
        ),
        (
            lambda p: plot_singular_values({"dW": np.ones((2, 2))}, p, "t"),
            r"spectra\['dW'\] must be a non-empty 1-D sequence",
        ),
        (lambda p: plot_bars({"a": 1.0}, p.with_suffix(".jpg"), "y", "t"), "path must end in .png"),
    ],
)
def test_bad_input(tmp_path, call, match):
    path = tmp_path / "out" / "fig.png"
    with pytest.raises(ValueError, match=match):
        call(path)
    assert not path.parent.exists()  # checked before anything is drawn or written


def test_loss_curves_of_single_seeds_promise_no_band(tmp_path):
    fig = plot_loss_curves({"full": [[2.0, 1.0, 0.5]]}, tmp_path / "loss.png")
    ax = fig.axes[0]
    assert len(ax.collections) == 0 and ax.get_legend().get_title().get_text() == ""


# -- figures a reader would rather look at --------------------------------------------------------

LONG_TITLE = (
    "A title long enough to run past the right edge of any figure that does not wrap it " * 2
)
METHODS = [f"method-{i}" for i in range(18)]  # more than matplotlib's ten colours
LINE_KINDS = ["metric_vs_params", "lines_with_intervals", "loss_curves", "parameter_counts",
              "parameter_count_points", "singular_values"]  # fmt: skip


def eighteen_of_each(tmp_path):
    """Every kind of figure, each drawing 18 series (or 48 bars) under a long title."""
    rng = np.random.default_rng(0)
    rows = [{"task": task, "method": m, "trainable_params": 10 ** (1 + i % 6),
             "mean": float(rng.random()), "half_width": 0.05}
            for task in ("babi-qa", "kjv-books", "stdlib-modules", "en-fr-numbers")
            for i, m in enumerate(METHODS)]  # fmt: skip
    curves = {m: (2.0 + rng.random((3, 300))).tolist() for m in METHODS}
    series = {m: ([1e4, 1e5, 1e6], [10.0 * (i + 1), 100.0 * (i + 1), 1e3 * (i + 1)])
              for i, m in enumerate(METHODS)}  # fmt: skip
    # a point per method at one larger size, every few close enough to be drawn side by side
    points = {LONG_TITLE: ("another model", {m: ([1e7], [10.0 ** (1 + i // 3 + 0.02 * i)])
                                             for i, m in enumerate(METHODS)})}  # fmt: skip
    spectra = {m: np.sort(rng.random(24))[::-1] for m in METHODS}
    bars = {f"{task}\n{m}": float(rng.random() * 100) for task in ("babi-qa", "kjv-books",
            "stdlib-modules", "en-fr-numbers") for m in METHODS[:12]}  # fmt: skip
    intervals = {m: ([24, 72, 240, 720], (0.2 + 0.5 * rng.random(4)).tolist(),
                     [0.05, float("nan"), 0.1, 0.0]) for m in METHODS}  # fmt: skip
    draw = {
        "metric_vs_params": lambda p: plot_metric_vs_params(rows, p, LONG_TITLE),
        "lines_with_intervals": lambda p: plot_lines_with_intervals(
            intervals, p, LONG_TITLE, LONG_TITLE, LONG_TITLE
        ),
        "loss_curves": lambda p: plot_loss_curves(curves, p, title=LONG_TITLE),
        "parameter_counts": lambda p: plot_parameter_counts(series, p, LONG_TITLE, LONG_TITLE,
                                                            guides=(0.001, 0.01, 0.1)),
        "parameter_count_points": lambda p: plot_parameter_count_panels(
            {LONG_TITLE: (series, LONG_TITLE)}, p, LONG_TITLE, (0.001, 0.01, 0.1), points
        ),
        "singular_values": lambda p: plot_singular_values(spectra, p, LONG_TITLE),
        "bars": lambda p: plot_bars(bars, p, "seconds", LONG_TITLE),
        "few_bars": lambda p: plot_bars({"full": 3.0, "lora": 2.0}, p, "s", LONG_TITLE),
    }  # fmt: skip
    return {
        kind: (f(tmp_path / f"{kind}.png"), tmp_path / f"{kind}.png") for kind, f in draw.items()
    }


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    return eighteen_of_each(tmp_path_factory.mktemp("figures"))


@pytest.mark.parametrize("kind", LINE_KINDS)
def test_eighteen_series_differ_in_colour_and_in_marker(figures, kind):
    from matplotlib.colors import to_hex

    for ax in figures[kind][0].axes:
        lines = [line for line in ax.lines if line.get_label() in METHODS]
        if not lines:
            continue
        assert len(lines) == 18
        assert len({to_hex(line.get_color()) for line in lines}) == 18
        assert len({line.get_marker() for line in lines}) >= 13  # 13 shapes: some come back
        assert len({(to_hex(line.get_color()), line.get_marker()) for line in lines}) == 18


@pytest.mark.parametrize("kind", [*LINE_KINDS, "bars", "few_bars"])
def test_no_text_reaches_past_the_canvas(figures, kind):
    from matplotlib.text import Text

    fig = figures[kind][0]
    fig.draw_without_rendering()
    canvas = fig.bbox
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
             and id(t) not in undrawn_tick_labels(fig)]  # fmt: skip
    assert any(LONG_TITLE[:20] in t.get_text().replace("\n", " ") for t in texts)
    for t in texts:
        box = t.get_window_extent()
        assert box.x0 >= canvas.x0 - 0.5 and box.x1 <= canvas.x1 + 0.5, (t.get_text(), box)
        assert box.y0 >= canvas.y0 - 0.5 and box.y1 <= canvas.y1 + 0.5, (t.get_text(), box)


@pytest.mark.parametrize("kind", LINE_KINDS)
def test_legend_lies_outside_every_data_area(figures, kind):
    fig = figures[kind][0]
    fig.draw_without_rendering()
    (legend,) = legends(fig)
    box = legend.get_window_extent()
    for ax in fig.axes:
        if ax.get_visible():
            assert not box.overlaps(ax.get_window_extent()), (kind, box, ax.get_window_extent())


@pytest.mark.parametrize("kind", [*LINE_KINDS, "bars", "few_bars"])
def test_no_png_is_wider_than_a_screen(figures, kind):
    header = figures[kind][1].read_bytes()[:24]
    assert int.from_bytes(header[16:20], "big") <= 1800, kind


def test_many_bars_lie_down_in_the_dicts_order(tmp_path):
    values = {f"task\nmethod-{i}": float(i + 1) for i in range(48)}
    path = tmp_path / "bars.png"
    fig = plot_bars(values, path, "seconds", "time", errors={k: 0.5 for k in values})
    assert_png(path, fig)
    data = path.read_bytes()
    assert int.from_bytes(data[16:20], "big") <= 1800
    ax = fig.axes[0]
    assert [p.get_width() for p in ax.patches] == list(values.values())
    assert [t.get_text() for t in ax.get_yticklabels()] == [k.replace("\n", " · ") for k in values]
    assert ax.yaxis_inverted()  # the first label on top


def test_guide_lines_are_fractions_of_the_model(tmp_path):
    series = {"full": ([1e4, 1e6], [1e4, 1e6]), "lora": ([1e4, 1e6], [50.0, 900.0])}
    fig = plot_parameter_counts(series, tmp_path / "p.png", "model size", "t",
                                guides=(0.001, 0.01, 0.1))  # fmt: skip
    guides = [line for line in fig.axes[0].lines if "of the model" in line.get_label()]
    assert [g.get_label() for g in guides] == [
        "0.1 % of the model",
        "1 % of the model",
        "10 % of the model",
    ]
    for g, f in zip(guides, (0.001, 0.01, 0.1), strict=True):
        np.testing.assert_allclose(g.get_ydata(), f * np.asarray(g.get_xdata()), rtol=1e-12)
        assert g.get_xdata().tolist() == [1e4, 1e6]


def test_panels_keep_a_method_s_style_and_the_png_carries_what_it_drew(tmp_path):
    panels = {
        "small": ({"full": ([10, 20], [10, 20]), "lora": ([10, 20], [1, 2])}, "size"),
        "large": ({"lora": ([100, 200], [5, 6])}, "size"),
    }
    path = tmp_path / "panels.png"
    fig = plot_parameter_count_panels(panels, path, "counts")
    assert_png(path, fig)
    small_lora = method_lines(fig.axes[0])["lora"]
    large_lora = method_lines(fig.axes[1])["lora"]
    assert small_lora.get_color() == large_lora.get_color()
    assert small_lora.get_marker() == large_lora.get_marker()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["full", "lora"]
    assert figure_data(path) == {
        "small": {"full": [[10, 20], [10, 20]], "lora": [[10, 20], [1, 2]]},
        "large": {"lora": [[100, 200], [5, 6]]},
    }
    plot_bars({"a": 1.0}, tmp_path / "bars.png", "y", "t")
    assert figure_data(tmp_path / "bars.png") is None  # a figure saved without data has none


def test_points_beside_the_lines_are_hollow_in_their_method_s_style_and_in_the_png(tmp_path):
    """Another model's counts, one point per method: hollow, in the colour and shape of the
    method's line, not joined to it; two that would hide each other drawn side by side (the
    lower left), the PNG keeping their true x; one legend entry for the set."""
    panels = {"family": ({"full": ([10, 20], [10, 20]), "lora": ([10, 20], [1, 2])}, "size")}
    dots = {"full": ([80], [80]), "lora": ([80], [4.4]), "lokr": ([80], [4])}
    points = {"family": ("other model", dots)}
    path = tmp_path / "points.png"
    fig = plot_parameter_count_panels(panels, path, "counts", points=points)
    assert_png(path, fig)
    ax = fig.axes[0]
    lines = method_lines(ax)
    drawn = {line.get_label().rsplit(": ", 1)[1]: line for line in ax.lines
             if line.get_label().startswith("_other model: ")}  # fmt: skip
    assert sorted(drawn) == ["full", "lokr", "lora"]
    for method in ("full", "lora"):
        assert drawn[method].get_color() == lines[method].get_color()
        assert drawn[method].get_marker() == lines[method].get_marker()
    assert all(line.get_markerfacecolor() == "none" for line in drawn.values())
    assert all(len(line.get_xdata()) == 1 for line in drawn.values())  # no line to join
    assert drawn["full"].get_xdata()[0] == 80  # alone at its height: where it is
    assert drawn["lokr"].get_xdata()[0] < 80 < drawn["lora"].get_xdata()[0]  # side by side
    assert [t.get_text() for t in fig.legends[0].get_texts()][-1] == "other model"
    assert figure_data(path) == {
        "family": {"full": [[10, 20], [10, 20]], "lora": [[10, 20], [1, 2]]},
        "other model": {"full": [[80], [80]], "lora": [[80], [4.4]], "lokr": [[80], [4]]},
    }
