"""Figures a reviewer would paste, from the same DataFrame as the tables (matplotlib, Agg).

* ``curve``: metric vs target sparsity per (task, pattern), mean ± std over seeds, with the
  dense model's mean as a dashed line; the controls (random, nomask) drawn like every pruner.
* ``drop``: per (task, pattern), the drop from dense (row metric - its seed's dense metric, mean ±
  std over seeds) against the fraction of the dense FLOPs kept, on a log axis: one line per pruner
  over its columns, dense at 0, the no-mask control as a dotted line, scratch drawn like a pruner.
  The y axis is zoomed to the points that did not collapse; a collapsed cell (any seed flagged
  ``collapsed``, or a mean below the others' range by more than that range) sits on the lower
  edge as a down-pointing triangle with its value written next to it, instead of stretching the axis.
  The labels of one column sit side by side (about 1 % of FLOPs apart) so that no error bar hides another.
* ``pareto``: metric vs the fraction of dense FLOPs kept (``flops_masked / flops_dense``) per task,
  every (pruner, column) a point with its std, and the non-dominated front of all points.
* ``allocation``: per column, the fraction of units each pruner kept in every prunable layer
  (mean over seeds, from the per-layer audit), layers in model order. From the result store only:
  W&B summaries do not carry the audit (it is logged as a W&B Table).
* ``pareto-latency-ort`` / ``pareto-latency-ov``: the same, against the measured runtime latency
  of the exported pruned model ÷ the dense-shaped one at batch 1 (``latency_ratio_ort`` /
  ``latency_ratio_ov``, ``smartbench suite speed``), where rows have it: the FLOPs figure's twin
  that shows what a deployment runtime makes of the saving.
* ``vs-<speed field>``: metric vs a measured speed figure (e.g. ``latency_ms``) where rows have one.
* ``cd``: the critical-difference diagram (Demšar 2006) of the competing pruners' mean ranks over
  the columns they all have, with the Friedman p and the Nemenyi CD (bench.reports.ranks.friedman_ranks).

Every pruner label has one colour and marker in every figure (:func:`style`): the built-in
pruners and controls a fixed one, any other label one derived from its name (stable across runs).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KEYS = ["label", "task", "pattern", "sparsity"]
SPEED_FIELDS = ("latency_ms",)
STYLES = {  # label -> (colour, marker, linestyle)
    "smart": ("#d62728", "o", "-"),
    "magnitude": ("#1f77b4", "s", "-"),
    "gmp": ("#17becf", "D", "-"),
    "pdp": ("#9467bd", "^", "-"),
    "pas": ("#8c564b", "v", "-"),
    "awg": ("#e377c2", "P", "-"),
    "acdc": ("#2ca02c", "X", "-"),
    "srste": ("#bcbd22", "*", "-"),
    "lamp": ("#ff9896", "h", "-"),
    "random": ("#7f7f7f", "x", "--"),
    "nomask": ("#000000", "+", ":"),
    "scratch": ("#555555", "4", "--"),
}
PALETTE = ("#ff7f0e", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")
MARKERS = ("h", "p", "<", ">", "d", "1", "2", "8")


def style(label: str) -> dict:
    """matplotlib keyword arguments of a label, the same in every figure and every run."""
    if label in STYLES:
        colour, marker, line = STYLES[label]
    else:
        h = zlib.crc32(label.encode())
        colour, marker, line = PALETTE[h % len(PALETTE)], MARKERS[(h // len(PALETTE)) % len(MARKERS)], "-."
    return {"color": colour, "marker": marker, "linestyle": line}


def figures(frame: pd.DataFrame, suite_name: str) -> Iterator[tuple[str, Figure]]:
    """Every figure this module makes for the frame's rows, as (file name, figure); the caller saves
    and closes each (PNG files: :func:`write_plots`; the web page: inline SVG, bench.reports.html)."""
    import matplotlib

    matplotlib.use("Agg")
    for draw in (curves, drop, pareto, allocation, speed, critical_difference):
        yield from draw(frame, suite_name)


def write_plots(frame: pd.DataFrame, suite_name: str, folder: Path) -> list[Path]:
    """Every figure of :func:`figures` as a PNG in ``folder``; returns the paths."""
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures(frame, suite_name):
        written.append(_save(fig, folder / name))
        plt.close(fig)
    return written


def _agg(frame: pd.DataFrame) -> pd.DataFrame:
    return (
        frame.groupby(KEYS, sort=False)
        .agg(mean=("metric", "mean"), std=("metric", "std"), metric_name=("metric_name", "first"))
        .reset_index()
    )


def curves(frame: pd.DataFrame, suite_name: str) -> Iterator[tuple[str, Figure]]:
    import matplotlib.pyplot as plt

    for (task, pattern), part in _agg(frame).groupby(["task", "pattern"], sort=False):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, line in part.groupby("label", sort=False):
            line = line.sort_values("sparsity")
            ax.errorbar(
                line["sparsity"], line["mean"], yerr=line["std"].fillna(0), capsize=3, label=label, **style(label)
            )
        dense = frame[frame["task"] == task].drop_duplicates("seed")["dense_metric"].mean()
        ax.axhline(dense, color="black", linestyle="--", linewidth=1, label="dense")
        ax.set(xlabel="target sparsity", ylabel=part["metric_name"].iloc[0], title=f"{task} · {pattern}")
        ax.legend(fontsize=7)
        yield _file_name(suite_name, task, pattern), fig


def drop_points(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (label, task, pattern, sparsity): FLOPs kept (mean), the change against dense (mean, std over
    seeds of metric - the seed's dense metric; dense - metric for lower-is-better metrics, so that a
    negative value is always a loss) and whether any seed collapsed."""
    from bench.reports.tables import LOWER_IS_BETTER

    frame = frame.dropna(subset=["flops_masked", "flops_dense", "metric", "dense_metric"])
    sign = np.where(frame["metric_name"].isin(LOWER_IS_BETTER), -1.0, 1.0)
    frame = frame.assign(
        kept=frame["flops_masked"] / frame["flops_dense"],
        drop=sign * (frame["metric"] - frame["dense_metric"]),
        collapsed_seed=frame["collapsed"].map(lambda f: bool(f) if f == f and f is not None else False)
        if "collapsed" in frame
        else False,
    )
    return (
        frame.groupby(KEYS, sort=False)
        .agg(kept=("kept", "mean"), mean=("drop", "mean"), std=("drop", "std"), collapsed=("collapsed_seed", "any"))
        .reset_index()
    )


def zoom(points: pd.DataFrame) -> tuple[float, float, pd.Series]:
    """(y low, y high, which points sit outside as collapsed): the range of the points that did not
    collapse (mean ± std, 0 included), padded by 8 %; a point below it by more than its height counts
    as collapsed too."""
    kept = points[~points["collapsed"]]
    if kept.empty:
        kept = points
    err = kept["std"].fillna(0)
    low, high = float(min((kept["mean"] - err).min(), 0.0)), float(max((kept["mean"] + err).max(), 0.0))
    height = max(high - low, 1e-9)
    outside = points["collapsed"] | (points["mean"] < low - height)
    if outside.any():  # recompute without the far-off points
        inner = points[~outside]
        err = inner["std"].fillna(0)
        low = float(min((inner["mean"] - err).min(), 0.0)) if not inner.empty else low
        high = float(max((inner["mean"] + err).max(), 0.0)) if not inner.empty else high
        height = max(high - low, 1e-9)
    return low - 0.08 * height, high + 0.08 * height, outside


DODGE = 0.004  # log10 step between labels at one column in the drop figure (about 1 % of FLOPs each)


def drop(frame: pd.DataFrame, suite_name: str) -> Iterator[tuple[str, Figure]]:
    import matplotlib.pyplot as plt

    from bench.reports.tables import reference_labels

    if not {"flops_masked", "flops_dense", "dense_metric"} <= set(frame):
        return
    references = reference_labels(frame)
    for (task, pattern), part in drop_points(frame).groupby(["task", "pattern"], sort=False):
        if part.empty:
            continue
        metric = frame.loc[frame["task"] == task, "metric_name"].iloc[0]
        low, high, outside = zoom(part)
        fig, ax = plt.subplots(figsize=(7, 3.8))
        ax.axhline(0.0, color="black", linestyle="--", linewidth=1, label="dense")
        labels = [label for label in dict.fromkeys(part["label"]) if label not in references]
        for label, line in part.groupby("label", sort=False):
            if label in references:  # nomask: one run per seed for every column, a horizontal line
                ax.axhline(line["mean"].mean(), color=style(label)["color"], linestyle=":", linewidth=1, label=label)
                continue
            dodge = 10 ** (DODGE * (labels.index(label) - (len(labels) - 1) / 2))  # side by side, not on top
            line = line.sort_values("kept").assign(kept=lambda d, f=dodge: d["kept"] * f)
            inside = line[~outside.loc[line.index]]
            kw = style(label)
            ax.errorbar(inside["kept"], inside["mean"], yerr=inside["std"].fillna(0), capsize=3, label=label, **kw)
            for _, point in line[outside.loc[line.index]].iterrows():
                ax.plot(
                    [point["kept"]], [low], marker="v", color=kw["color"], markersize=7, linestyle="", clip_on=False
                )
                ax.annotate(
                    f"{point['mean']:.1f}",
                    (point["kept"], low),
                    textcoords="offset points",
                    xytext=(3, 3),
                    fontsize=6,
                    color=kw["color"],
                )
        competing = part[~part["label"].isin(references)]["kept"]
        ax.set_xscale("log")
        if not competing.empty:  # the columns' range, not the references' 1.0
            ax.set_xlim(competing.min() / 1.35, min(1.05, competing.max() * 1.35))
            columns = part[~part["label"].isin(references)].groupby("sparsity")["kept"].mean()
            ticks = sorted({round(float(k), 4) for k in columns})  # one per column, at its mean FLOPs kept
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{k:.3g}" for k in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set(
            xlabel="FLOPs kept (masked / dense, log)",
            ylabel=f"{metric} - dense",
            ylim=(low, high),
            title=f"{task} · {pattern}: drop from dense vs FLOPs" + (" (▼ collapsed)" if outside.any() else ""),
        )
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
        yield _file_name(suite_name, task, pattern, "drop"), fig


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (fewer FLOPs kept, higher metric), by FLOPs."""
    front, best = [], -np.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _points(ax, part: pd.DataFrame, x: str) -> pd.DataFrame:
    """Every (label, column) of ``part`` as one point: mean ``x``, mean metric, std error bar."""
    points = (
        part.groupby(KEYS, sort=False).agg(x=(x, "mean"), y=("metric", "mean"), yerr=("metric", "std")).reset_index()
    )
    for label, group in points.groupby("label", sort=False):
        kw = style(label) | {"linestyle": ""}
        ax.errorbar(group["x"], group["y"], yerr=group["yerr"].fillna(0), capsize=3, label=label, **kw)
    return points


COST_AXES = (  # (column, axis label, title word, file suffix) of the Pareto figures
    ("flops_kept", "FLOPs kept (masked / dense)", "FLOPs", "pareto-flops"),
    ("latency_ratio_ort", "ONNX Runtime latency, pruned / dense (batch 1)", "ORT latency", "pareto-latency-ort"),
    ("latency_ratio_ov", "OpenVINO latency, pruned / dense (batch 1)", "OpenVINO latency", "pareto-latency-ov"),
)


def pareto(frame: pd.DataFrame, suite_name: str) -> Iterator[tuple[str, Figure]]:
    import matplotlib.pyplot as plt

    frame = frame.copy()
    if {"flops_dense", "flops_masked"} <= set(frame):
        frame["flops_kept"] = frame["flops_masked"] / frame["flops_dense"]
    for field, xlabel, word, suffix in COST_AXES:
        if field not in frame or frame[field].isna().all():
            continue
        for task, part in frame.dropna(subset=[field]).groupby("task", sort=False):
            fig, ax = plt.subplots(figsize=(5, 3.5))
            points = _points(ax, part, field)
            front = pareto_front(list(zip(points["x"], points["y"], strict=True)))
            ax.plot([p[0] for p in front], [p[1] for p in front], color="black", linewidth=0.8, label="front")
            dense = part.drop_duplicates("seed")["dense_metric"].mean()
            ax.plot([1.0], [dense], marker="*", color="black", markersize=10, linestyle="", label="dense")
            metric = part["metric_name"].iloc[0]
            ax.set(xlabel=xlabel, ylabel=metric, title=f"{task}: {metric} vs {word}")
            ax.legend(fontsize=7)
            yield _file_name(suite_name, task, suffix), fig


def allocation(frame: pd.DataFrame, suite_name: str) -> Iterator[tuple[str, Figure]]:
    """Per column: kept fraction per layer for every pruner (mean over seeds); controls that keep
    every unit (nomask) are left out, so the axis shows where the pruners differ."""
    import matplotlib.pyplot as plt

    from bench.reports.tables import reference_labels

    if "kept_by_layer" not in frame:
        return
    rows = frame[frame["kept_by_layer"].apply(lambda v: isinstance(v, dict) and bool(v))]
    rows = rows[~rows["label"].isin(reference_labels(frame))]
    for (task, pattern, sparsity), part in rows.groupby(["task", "pattern", "sparsity"], sort=False):
        layers = list(dict.fromkeys(name for kept in part["kept_by_layer"] for name in kept))
        fig, ax = plt.subplots(figsize=(max(5, 0.25 * len(layers)), 3.5))
        for label, group in part.groupby("label", sort=False):
            kept = pd.DataFrame(list(group["kept_by_layer"])).reindex(columns=layers).mean()
            ax.plot(range(len(layers)), kept.to_numpy(), label=label, markersize=4, **style(label))
        ax.axhline(1 - sparsity, color="black", linestyle="--", linewidth=1, label="uniform")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=90, fontsize=5)
        top = max(1 - sparsity, max(max(kept.values()) for kept in part["kept_by_layer"]))
        ax.set(
            ylabel="units kept",
            ylim=(0, min(1.02, 1.15 * top)),
            title=f"{task} · {pattern} · {sparsity:g}: per-layer allocation",
        )
        ax.legend(fontsize=6)
        yield _file_name(suite_name, task, pattern, f"{sparsity:g}", "allocation"), fig


def speed(frame: pd.DataFrame, suite_name: str) -> Iterator[tuple[str, Figure]]:
    import matplotlib.pyplot as plt

    for field in SPEED_FIELDS:
        if field not in frame or frame[field].isna().all():
            continue
        for task, part in frame.dropna(subset=[field]).groupby("task", sort=False):
            fig, ax = plt.subplots(figsize=(5, 3.5))
            _points(ax, part, field)
            metric = part["metric_name"].iloc[0]
            ax.set(xlabel=field, ylabel=metric, title=f"{task}: {metric} vs {field}")
            ax.legend(fontsize=7)
            yield _file_name(suite_name, task, f"vs-{field}"), fig


def critical_difference(frame: pd.DataFrame, suite_name: str) -> Iterator[tuple[str, Figure]]:
    from bench.reports.cd_diagram import cd_figure
    from bench.reports.ranks import friedman_ranks

    result = friedman_ranks(frame)
    if result is not None:
        yield (
            _file_name(suite_name, "cd"),
            cd_figure(result, f"{suite_name}: mean rank over {result.n_columns} columns"),
        )


def _file_name(*parts: str) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", p) for p in parts) + ".png"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
