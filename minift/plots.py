"""The figures minift's readers look at instead of tables.

Every function takes plain data (lists and dicts of numbers, never minift objects), draws one
figure, saves it as a PNG at ``path`` and returns the matplotlib ``Figure`` so a test or a notebook
can read the data back (``fig.axes[0].lines[0].get_ydata()``) or show it.

    plot_metric_vs_params   score against trainable parameters, one panel per task
    plot_lines_with_intervals   a score against a setting (data size …), a line per method
    plot_loss_curves        training loss per step: mean over seeds, shaded min–max band
    plot_bars               one number per label (time per method, parameters per method)
    plot_parameter_counts   trainable parameters against model size or LoRA rank, log–log
    plot_parameter_count_panels   the same, several panels side by side (one legend), another
                                  model's counts as hollow points beside the lines
    plot_singular_values    the sorted singular values of a learned ΔW, log y
    figure_data             what a parameter-count PNG drew, read back from the file

What every figure keeps for its reader: each series its own colour AND marker (``COLORS`` and
``MARKERS`` repeat together only after 234 series); the legend beside the axes, never over the
data; titles and labels wrapped to the space they have, so nothing is clipped; no figure wider
than ``MAX_WIDTH`` (many bars are laid down instead). tests/test_plots.py renders each figure and
checks all four.

Figures are built with ``matplotlib.figure.Figure`` directly, not ``pyplot``: no global list of
open figures to leak, no backend to select, nothing to close. Saving is atomic: the PNG is rendered
in memory, then written to a temporary file in the same directory and renamed onto ``path``
(``checkpoint.atomic_write_bytes``), so a crash leaves the old file or none, never half a PNG. The
parent directory is created if missing. Bad input (an empty dict, lengths that disagree, a
non-positive number on a log axis) is a ValueError naming the argument.
"""

from __future__ import annotations

import io
import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from minift.files import atomic_write_bytes

__all__ = [
    "plot_metric_vs_params",
    "plot_lines_with_intervals",
    "plot_loss_curves",
    "plot_bars",
    "plot_parameter_counts",
    "plot_parameter_count_panels",
    "figure_data",
    "plot_singular_values",
]

DPI = 120
MAX_WIDTH = 12.0  # inches: 1,440 px at DPI, narrower than a laptop's screen
# Every series differs from every other in colour AND marker (for print and colour-blind readers):
# 14 colours (matplotlib's ten, then four darker ones) against 13 markers repeat together only
# after 182 series; a comparison draws 13 methods at most.
# matplotlib's ten, then eight dark ones far from them: minift compare draws 17 methods
COLORS = [f"C{i}" for i in range(10)] + [
    "#000000", "#8b0000", "#00008b", "#556b2f", "#ff00ff", "#008b8b", "#b8860b", "#4b0082",
]  # fmt: skip
MARKERS = "osD^vP*Xh<>pd"
# the guide lines of the parameter-count plots: 0.1 %, 1 % and 10 % of the model
GUIDE_FRACTIONS = (0.001, 0.01, 0.1)


# -- helpers -------------------------------------------------------------------------------------


def _save(fig: Figure, path, data=None) -> None:
    """Render ``fig`` to PNG bytes, then write them atomically to ``path`` (parents created).
    ``data``, if given, is stored as JSON in the PNG's "Description" text, so a test can hold a
    committed picture to what the code draws today (``figure_data``)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png (the figures are PNGs), got {str(path)!r}")
    buffer = io.BytesIO()
    metadata = {"Description": json.dumps(data)} if data is not None else None
    # a failure here leaves the disk untouched
    fig.savefig(buffer, format="png", dpi=DPI, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def _nonempty_mapping(name: str, value) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict, got {type(value).__name__}")
    if len(value) == 0:
        raise ValueError(f"{name} is empty: nothing to plot")


def _numbers(name: str, values, positive: bool = False) -> np.ndarray:
    """``values`` as a 1-D float64 array of finite numbers (> 0 if ``positive``); else ValueError
    naming ``name`` and the first bad entry."""
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got {values!r}") from e
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x) | ((x <= 0) if positive else False))
    if bad.size:
        need = "finite and > 0 (log axis)" if positive else "finite"
        raise ValueError(f"{name} must be {need}, got {x[bad[0]]} at index {bad[0]}")
    return x


def _half_width(name: str, value) -> float:
    """A confidence interval's half width: a number ≥ 0, or nan when there is none (one seed)."""
    try:
        hw = float(value)
    except (TypeError, ValueError):
        hw = -1.0  # not a number: reported below
    if math.isnan(hw) or (math.isfinite(hw) and hw >= 0):
        return hw
    raise ValueError(f"{name} must be ≥ 0 or nan (one seed, no interval), got {value!r}")


def _format_number(v: float) -> str:
    """Three significant digits, large counts with k/M/G: 0.812, 512, 2,048, 73.7k, 1.23M."""
    if v == 0:
        return "0"
    a = abs(float(f"{v:.3g}"))  # rounded first, so 999,600 reads "1M", not "1e+03k"
    for threshold, scale, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if a >= threshold:
            return f"{v / scale:.3g}{suffix}"
    if a >= 100:  # whole numbers up to 9,999 read best in full
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _error_bars(ax, x, y, half_width, color: str, linewidth: float) -> np.ndarray:
    """y ± half_width at each x, where there is an interval: a nan half width (one seed) gets no
    bar. Which points got one."""
    has_bar = ~np.isnan(half_width)
    if has_bar.any():
        ax.errorbar(x[has_bar], y[has_bar], yerr=half_width[has_bar], fmt="none", ecolor=color,
                    elinewidth=linewidth, capsize=4)  # fmt: skip
    return has_bar


def _finish_log_lines(fig: Figure, ax, path, xlabel: str, ylabel: str, title: str) -> Figure:
    """Label a figure of one line per series on log axes, grid the minor decades too, add the
    legend, save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_wrap(title, fig.get_figwidth() - 3.5))
    ax.grid(True, which="both", alpha=0.25)
    _legend_right(ax)
    _save(fig, path)
    return fig


def _style(i: int) -> dict:
    """Colour and marker of the i-th series, the same order in every figure."""
    return {"color": COLORS[i % len(COLORS)], "marker": MARKERS[i % len(MARKERS)]}


def _wrap(text: str, width_inches: float, fontsize: float = 12.0) -> str:
    """``text`` broken into lines that fit ``width_inches`` at ``fontsize`` points (an axes
    title's 12 by default; a character is at most ~0.62 em wide), so a title is wrapped, never
    clipped at the figure's edge."""
    per_line = max(16, int(width_inches * 72 / (0.62 * fontsize)))
    return "\n".join(textwrap.fill(line, per_line) for line in text.split("\n"))


def _legend_right(ax, **kwargs) -> None:
    """The legend beside the axes, right of them, where it hides no data; constrained layout
    narrows the axes to make room."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
              **kwargs)  # fmt: skip


def _figure_legend(fig: Figure, axes, **kwargs) -> None:
    """One legend for all panels, right of them: each label once, in the order first drawn."""
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8,
               **kwargs)  # fmt: skip


def _pair(name: str, value, what: str) -> None:
    """``value`` must be a pair (a list or tuple of two), else a ValueError naming ``name``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair {what}")


def figure_data(path) -> object:
    """The data a figure saved with ``data`` drew, read back from its PNG (None if it has none)."""
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as image:
        text = image.text.get("Description")
    return None if text is None else json.loads(text)


# -- score against trainable parameters ----------------------------------------------------------

ROW_KEYS = ("task", "method", "trainable_params", "mean", "half_width")
NAMED_POINTS = 6


def plot_metric_vs_params(rows, path, metric_name: str | None = None) -> Figure:
    """The comparison's "score against trainable parameters": one panel per task.

    rows: list of dicts {"task", "method", "trainable_params", "mean", "half_width"}, one per
    (task, method); half_width is the confidence interval's (``stats.mean_ci``), nan for a single
    seed (the point is then drawn without an error bar). x = trainable parameters (log scale),
    y = the metric's mean over seeds. A method keeps its colour and marker in every panel; one
    legend, right of the panels, names them all. With few methods (up to ``NAMED_POINTS``) each
    point also carries its method's name; more names than that would cover each other.
    """
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise ValueError(f"rows must be a list of dicts, got {type(rows).__name__}")
    if len(rows) == 0:
        raise ValueError("rows is empty: nothing to plot")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"rows[{i}] must be a dict, got {type(row).__name__}")
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"rows[{i}] is missing {missing}; each row needs {list(ROW_KEYS)}")
        _numbers(f"rows[{i}]['trainable_params']", [row["trainable_params"]], positive=True)
        _numbers(f"rows[{i}]['mean']", [row["mean"]])
        _half_width(f"rows[{i}]['half_width']", row["half_width"])

    tasks = list(dict.fromkeys(str(r["task"]) for r in rows))  # in order of first appearance
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    ncols = min(2, len(tasks))  # two panels and the legend fit MAX_WIDTH
    nrows = math.ceil(len(tasks) / ncols)
    fig = Figure(figsize=(min(MAX_WIDTH, 4.6 * ncols + 2.0), 3.9 * nrows + 0.6),
                 layout="constrained")  # fmt: skip
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    ylabel = metric_name or "metric"

    for ax, task in zip(axes, tasks, strict=False):
        for m, method in enumerate(methods):
            mine = [r for r in rows if str(r["task"]) == task and str(r["method"]) == method]
            if not mine:
                continue
            style = _style(m)
            x = np.array([float(r["trainable_params"]) for r in mine])
            y = np.array([float(r["mean"]) for r in mine])
            hw = np.array([float(r["half_width"]) for r in mine])
            ax.plot(x, y, linestyle="none", markersize=7, label=method, **style)
            _error_bars(ax, x, y, hw, style["color"], linewidth=1.2)
            for xi, yi in zip(x, y, strict=True) if len(methods) <= NAMED_POINTS else ():
                ax.annotate(method, (xi, yi), xytext=(6, 4), textcoords="offset points",
                            fontsize=8, color=style["color"])  # fmt: skip
        ax.set_xscale("log")
        ax.margins(x=0.2, y=0.15)  # room for the method names
        ax.set_title(f"task: {task}")
        ax.set_xlabel("trainable parameters (count, log scale)")
        ax.set_ylabel(_wrap(f"{ylabel}, mean over seeds", 3.0, 10))
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    _figure_legend(fig, axes, title="method", title_fontsize=8)
    title = (f"{ylabel} against trainable parameters\n"
             "error bars: ± confidence-interval half width (none for a single seed)")  # fmt: skip
    fig.suptitle(_wrap(title, fig.get_figwidth() - 0.5, 11), fontsize=11)
    _save(fig, path)
    return fig


def plot_lines_with_intervals(curves, path, xlabel: str, ylabel: str, title: str) -> Figure:
    """A score against a setting on a log x axis (training examples, rank …), one line per method.

    curves: {method: (xs, means, half_widths)}, the half widths of each mean's confidence
    interval (``stats.mean_ci``; nan for one seed: no bar). x must be positive.
    """
    _nonempty_mapping("curves", curves)
    fig = Figure(figsize=(8.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for i, (method, value) in enumerate(curves.items()):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
            raise ValueError(f"curves[{method!r}] must be (xs, means, half_widths)")
        x = _numbers(f"curves[{method!r}] xs", value[0], positive=True)
        y = _numbers(f"curves[{method!r}] means", value[1])
        hw = np.array([_half_width(f"curves[{method!r}] half_widths", h) for h in value[2]])
        if not len(x) == len(y) == len(hw):
            raise ValueError(f"curves[{method!r}]: xs, means and half_widths differ in length")
        style = _style(i)
        ax.plot(x, y, label=method, markersize=6, **style)
        _error_bars(ax, x, y, hw, style["color"], linewidth=1.0)
    ax.set_xscale("log")
    ax.set_xlabel(_wrap(xlabel, fig.get_figwidth() - 3.5, 10))
    ax.set_ylabel(_wrap(ylabel, fig.get_figheight() - 1.5, 10))
    ax.set_title(_wrap(title, fig.get_figwidth() - 3.5))
    ax.grid(True, which="major", alpha=0.3)
    _legend_right(ax, title="method", title_fontsize=8)
    _save(fig, path)
    return fig


# -- training loss -------------------------------------------------------------------------------


def plot_loss_curves(
    curves,
    path,
    title: str = "Training loss",
    log_y: bool = False,
    ylabel: str = "training loss (cross-entropy, nats)",
) -> Figure:
    """Training loss against step, one line per method: the mean over seeds, and a shaded band
    from the lowest to the highest seed at each step.

    curves: {method: [[loss at step 1, 2, …, T] for each seed]}; a method's seeds all have the same
    T (methods may differ). Step t is the loss of the t-th optimizer update, so x runs from 1 to T.
    log_y: a log y axis (losses must then be > 0), useful when the loss falls by decades.
    """
    _nonempty_mapping("curves", curves)
    fig = Figure(figsize=(9.0, 4.8), layout="constrained")
    ax = fig.subplots()
    any_band = False
    for m, (method, runs) in enumerate(curves.items()):
        name = f"curves[{method!r}]"
        if isinstance(runs, (str, bytes)) or not isinstance(runs, Sequence) or len(runs) == 0:
            raise ValueError(f"{name} must be a non-empty list of loss lists, one per seed")
        losses = [_numbers(f"{name}[{k}]", run, positive=log_y) for k, run in enumerate(runs)]
        lengths = [len(run) for run in losses]
        if len(set(lengths)) != 1:
            raise ValueError(
                f"{name}: every seed must have the same number of steps, got {lengths}"
            )
        L = np.stack(losses)  # (seeds, T)
        steps = np.arange(1, L.shape[1] + 1)
        style = _style(m)
        color = style["color"]
        seeds = f"{L.shape[0]} seed{'s' if L.shape[0] > 1 else ''}"
        every = max(1, L.shape[1] // 8)  # eight markers a line, shifted per method to not pile up
        ax.plot(steps, L.mean(axis=0), label=f"{method} (mean of {seeds})",
                markevery=(m % every, every), markersize=5, **style)  # fmt: skip
        if L.shape[0] > 1:
            ax.fill_between(steps, L.min(axis=0), L.max(axis=0), color=color, alpha=0.2, lw=0)
            any_band = True
    if log_y:
        ax.set_yscale("log")
    ax.set_title(_wrap(title, fig.get_figwidth() - 3.5))
    ax.set_xlabel("step (optimizer updates)")
    ax.set_ylabel(ylabel + (", log scale" if log_y else ""))
    ax.grid(True, alpha=0.3)
    # a single seed has no band, so its legend must not promise one
    _legend_right(ax, title="shaded: min–max over seeds" if any_band else None, title_fontsize=8)
    _save(fig, path)
    return fig


# -- bars ----------------------------------------------------------------------------------------


def plot_bars(values, path, ylabel: str, title: str, log: bool = False, errors=None) -> Figure:
    """A bar per label, its value written above it (time per method, parameters per method …).

    values: {label: number}, drawn in the dict's order; more than ``VERTICAL_BARS`` of them are
    drawn as horizontal bars (the value axis then runs across), so no chart outgrows a screen.
    ylabel: what the numbers are, with units ("seconds per step (s)"). log: a log value axis
    (values must then be > 0). errors: None or
    {label: half width ≥ 0 or nan} with the same labels as ``values``; drawn as error bars.
    """
    _nonempty_mapping("values", values)
    labels = [str(k) for k in values]
    heights = _numbers("values", list(values.values()), positive=log)
    err = None
    if errors is not None:
        _nonempty_mapping("errors", errors)
        if set(errors) != set(values):
            raise ValueError(
                f"errors must have the same labels as values: missing "
                f"{sorted(map(str, set(values) - set(errors)))}, "
                f"extra {sorted(map(str, set(errors) - set(values)))}"
            )
        err = np.array([_half_width(f"errors[{k!r}]", errors[k]) for k in values])

    if len(labels) > VERTICAL_BARS:  # more bars than a screen's width holds: lay them down
        return _horizontal_bars(labels, heights, err, path, ylabel, title, log)
    fig = Figure(figsize=(min(MAX_WIDTH, max(5.0, 0.9 * len(labels) + 2.0)), 4.3),
                 layout="constrained")  # fmt: skip
    ax = fig.subplots()
    x = np.arange(len(labels))
    ax.bar(x, heights, color="C0", width=0.7)
    top = heights.copy()  # where each value's text goes: above the bar, or above its error bar
    if err is not None:
        has_bar = _error_bars(ax, x, heights, err, "black", linewidth=1.0)
        top = np.where(has_bar, heights + np.sign(heights) * np.nan_to_num(err), heights)
    for xi, h, t in zip(x, heights, top, strict=True):
        ax.annotate(_format_number(h), (xi, t), xytext=(0, 3 if h >= 0 else -3),
                    textcoords="offset points", ha="center", va="bottom" if h >= 0 else "top",
                    fontsize=9)  # fmt: skip
    long_labels = sum(map(len, labels)) > 60 or max(map(len, labels)) > 12
    ax.set_xticks(
        x, labels, rotation=30 if long_labels else 0, ha="right" if long_labels else "center"
    )
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.15)  # room for the numbers above the tallest bar
    ax.set_ylabel(ylabel + (", log scale" if log else ""))
    ax.set_title(_wrap(title, fig.get_figwidth() - 1.2))  # the axes: the figure less its labels
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _save(fig, path)
    return fig


VERTICAL_BARS = 10  # up to 11 inches wide; more bars are drawn horizontally, one label a line


def _horizontal_bars(labels, widths, err, path, xlabel: str, title: str, log: bool) -> Figure:
    """``plot_bars`` lying down: the first label on top, each label on one line (its line
    breaks read " · "), the value right of its bar; as tall as the bars need, never wider."""
    labels = [label.replace("\n", " · ") for label in labels]
    fig = Figure(figsize=(8.0, round(0.28 * len(labels) + 1.4, 1)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(labels))
    ax.barh(y, widths, color="C0", height=0.7)
    end = widths.copy()
    if err is not None:
        has_bar = ~np.isnan(err)
        if has_bar.any():
            ax.errorbar(widths[has_bar], y[has_bar], xerr=err[has_bar], fmt="none",
                        ecolor="black", elinewidth=1.0, capsize=3)  # fmt: skip
        end = np.where(has_bar, widths + np.sign(widths) * np.nan_to_num(err), widths)
    for yi, w, e in zip(y, widths, end, strict=True):
        ax.annotate(_format_number(w), (e, yi), xytext=(3 if w >= 0 else -3, 0),
                    textcoords="offset points", ha="left" if w >= 0 else "right",
                    va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()  # the dict's first label on top, as it is read
    if log:
        ax.set_xscale("log")
    ax.margins(x=0.12, y=0.01)  # room for the numbers right of the longest bar
    ax.set_xlabel(xlabel + (", log scale" if log else ""))
    label_inches = max(map(len, labels)) * 8 * 0.62 / 72  # 8-point tick labels
    ax.set_title(_wrap(title, fig.get_figwidth() - label_inches - 0.6))
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    _save(fig, path)
    return fig


# -- parameter counts ----------------------------------------------------------------------------


def plot_parameter_counts(series, path, xlabel: str, title: str, guides=()) -> Figure:
    """Trainable parameters against model size or LoRA rank, log–log, one line per method.

    series: {method: (xs, ys)}, xs and ys of equal length, all > 0; each line is drawn in order of
    increasing x. On log–log axes a count that grows like xᵏ is a straight line of slope k: full
    fine-tuning grows like d_model², LoRA like r · d_model, BitFit like d_model.
    xlabel: the x quantity with its unit ("d_model (width)", "LoRA rank r").
    guides: fractions f of the model (``GUIDE_FRACTIONS``: 0.1 %, 1 %, 10 %), each the grey line
    y = f · x; only where x is the model's parameter count.
    """
    return plot_parameter_count_panels({"": (series, xlabel)}, path, title, guides)


def plot_parameter_count_panels(panels, path, title: str, guides=(), points=None) -> Figure:
    """``plot_parameter_counts`` side by side: panels is {subtitle: (series, xlabel)}. A method
    keeps its colour and marker in every panel, and one legend, right of the panels, names them.

    points: {subtitle: (label, series)}, another model's counts drawn into that panel beside its
    lines (Llama-2 7B beside GPT-2's): HOLLOW markers in each method's colour and shape, not
    joined, side by side where they would hide each other (``_dodged``), one legend entry,
    ``label``, for the set. The PNG carries what it drew (``figure_data``): {subtitle: {method:
    [xs, ys]}} per panel, then {label: {method: [xs, ys]}} per set of points, at their true x."""
    _nonempty_mapping("panels", panels)
    checked, marked = {}, {}
    for subtitle, panel in panels.items():
        _pair(f"panels[{subtitle!r}]", panel, "(series, xlabel)")
        checked[subtitle] = (_count_series(panel[0]), str(panel[1]))
    for subtitle, value in (points or {}).items():
        _pair(f"points[{subtitle!r}]", value, "(label, series)")
        if subtitle not in checked or value[0] in [*checked, *(v[0] for v in marked.values())]:
            raise ValueError(f"points[{subtitle!r}]: expected a panel's subtitle (one of "
                             f"{list(checked)}) and a label of its own, got "
                             f"{value[0]!r}")  # fmt: skip
        marked[subtitle] = (str(value[0]), _count_series(value[1]))
    fractions = _numbers("guides", list(guides), positive=True) if len(guides) else []
    methods = list(dict.fromkeys(m for series, _ in checked.values() for m in series))
    methods += [m for _, series in marked.values() for m in series if m not in methods]
    fig = Figure(figsize=(min(MAX_WIDTH, 4.6 * len(panels) + 2.4), 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (subtitle, (series, xlabel)) in zip(axes, checked.items(), strict=True):
        for method, (xs, ys) in series.items():
            ax.plot(xs, ys, label=method, **_style(methods.index(method)))
        label, dots = marked.get(subtitle, ("", {}))
        for method, drawn_x in _dodged(dots).items():  # label "_…": no legend entry each
            ax.plot(drawn_x, dots[method][1], linestyle="none", markersize=8, markeredgewidth=1.6,
                    markerfacecolor="none", label=f"_{label}: {method}",
                    **_style(methods.index(method)))  # fmt: skip
        if dots:  # the set's one legend entry
            ax.plot([], [], "o", color="0.3", markersize=8, markerfacecolor="none", label=label)
        every_x = np.concatenate([xs for xs, _ in [*series.values(), *dots.values()]])
        ends = np.array([every_x.min(), every_x.max()])
        for f, dashes in zip(fractions, ("--", ":", "-."), strict=False):
            ax.plot(ends, f * ends, color="0.45", linestyle=dashes, linewidth=1.0,
                    label=f"{100 * f:g} % of the model")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # less than a decade: labels would collide
        if len(np.unique(every_x)) <= 8:  # few sizes: name each one where it is drawn
            ax.set_xticks(np.unique(every_x), [_format_number(x) for x in np.unique(every_x)])
        ax.set_xlabel(_wrap(f"{xlabel}, log scale", 4.4, 9), fontsize=9)
        ax.set_ylabel("trainable parameters (count, log scale)")
        ax.set_title(_wrap(subtitle, 4.4), fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
    _figure_legend(fig, axes)
    fig.suptitle(_wrap(title, fig.get_figwidth() - 0.5, 11), fontsize=11)
    drawn = [*((subtitle, series) for subtitle, (series, _) in checked.items()), *marked.values()]
    data = {name: {m: [xs.tolist(), ys.tolist()] for m, (xs, ys) in series.items()}
            for name, series in drawn}  # fmt: skip
    _save(fig, path, data)
    return fig


# Points within DODGE_DECADES of each other in y, at one x, would hide each other (a marker is ~8
# points tall, a decade ~35 on a 4.8-inch panel): they are drawn DODGE_STEP decades of x apart.
DODGE_DECADES, DODGE_STEP = 0.25, 0.08


def _dodged(series) -> dict[str, np.ndarray]:
    """{method: the x where each of its points is drawn}: points at one x whose y lie within
    ``DODGE_DECADES`` of the next one's are spread sideways, lowest left, centred on their x.
    Only the drawing moves; the PNG's data keep the true x."""
    if not series:
        return {}
    x, y = (np.concatenate([pair[k] for pair in series.values()]) for k in (0, 1))
    order = np.lexsort((y, x))  # by x, then by y
    breaks = (np.diff(x[order]) != 0) | (np.diff(np.log10(y[order])) >= DODGE_DECADES)
    drawn = x.copy()
    for group in np.split(order, np.flatnonzero(breaks) + 1):
        drawn[group] *= 10.0 ** (DODGE_STEP * (np.arange(len(group)) - (len(group) - 1) / 2))
    ends = np.cumsum([len(xs) for xs, _ in series.values()])[:-1]
    return dict(zip(series, np.split(drawn, ends), strict=True))


def _count_series(series) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{method: (xs, ys)} checked (equal lengths, all > 0) and sorted by increasing x."""
    _nonempty_mapping("series", series)
    out = {}
    for method, pair in series.items():
        name = f"series[{method!r}]"
        _pair(name, pair, "(xs, ys)")
        xs = _numbers(f"{name} xs", pair[0], positive=True)
        ys = _numbers(f"{name} ys", pair[1], positive=True)
        if len(xs) != len(ys):
            raise ValueError(
                f"{name}: xs and ys must have the same length, got {len(xs)} and {len(ys)}"
            )
        order = np.argsort(xs, kind="stable")
        out[str(method)] = (xs[order], ys[order])
    return out


# -- singular values -----------------------------------------------------------------------------


def plot_singular_values(spectra, path, title: str) -> Figure:
    """The singular values σ₁ ≥ σ₂ ≥ … of each learned ΔW, log y, one line per label.

    spectra: {label: 1-D array of singular values (≥ 0)}, in any order; each is sorted descending.
    A rank-r update (LoRA's ΔW = (α/r)·B·A) has r singular values well above the rest: its line
    falls off a cliff after index r. Exact zeros have no place on a log axis; they are left out
    and counted in the legend.
    """
    _nonempty_mapping("spectra", spectra)
    fig = Figure(figsize=(8.0, 4.5), layout="constrained")
    ax = fig.subplots()
    for m, (label, values) in enumerate(spectra.items()):
        name = f"spectra[{label!r}]"
        s = _numbers(name, values)
        if (s < 0).any():
            raise ValueError(f"{name} must be ≥ 0 (singular values), got {s.min()}")
        if not (s > 0).any():
            raise ValueError(f"{name} is all zeros: nothing to show on a log axis")
        s = np.sort(s)[::-1]
        zeros = int((s == 0).sum())
        legend = str(label) + (f" ({zeros} exact zeros not shown)" if zeros else "")
        style = _style(m)
        ax.plot(np.arange(1, len(s) + 1), s, label=legend, color=style["color"],
                marker=style["marker"] if len(s) <= 64 else None, markersize=4)  # fmt: skip
    ax.set_yscale("log", nonpositive="mask")
    return _finish_log_lines(
        fig, ax, path, "index i (largest first)", "singular value σᵢ (log scale)", title
    )
