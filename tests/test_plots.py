"""Each figure: a real PNG whose drawn data equal the inputs, saved atomically; bad input named."""

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

import minift.files
from minift.plots import (
    plot_bars,
    plot_loss_curves,
    plot_metric_vs_params,
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
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["full", "lora"]


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
        (lambda p: plot_singular_values({}, p, "t"), "spectra is empty"),
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
