"""Critical-difference diagram of a Friedman / Nemenyi comparison (Demšar 2006, JMLR 7:1-30, Fig. 1).

A horizontal rank axis from 1 to k, best (rank 1) at the left; each method hangs from its mean rank with
its name and mean rank, the better half labelled on the left, the other half on the right; a thick bar joins
each Nemenyi group of two or more methods (mean ranks within CD of one another,
:func:`bench.reports.stats.nemenyi_groups`); a bar of length CD above the axis; the Friedman p in the title.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bench.reports.stats import Friedman, nemenyi_groups

if TYPE_CHECKING:
    from matplotlib.figure import Figure

AXIS_Y = 0.0  # the rank axis; the drawing goes downwards (negative y) from it
BAR_STEP = 0.18  # vertical spacing of the group bars
LINE_STEP = 0.32  # vertical spacing of the label lines


def cd_figure(result: Friedman, title: str) -> Figure:
    """The critical-difference diagram of ``result`` (not saved: the caller saves and closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = result.n_methods
    order = sorted(result.mean_ranks, key=lambda m: (result.mean_ranks[m], m))
    groups = [g for g in nemenyi_groups(result.mean_ranks, result.cd) if len(g) > 1]
    n_left = math.ceil(k / 2)
    left, right = order[:n_left], order[n_left:]

    pad = 0.45 * (k - 1) + 0.5  # room for the labels on each side, in rank units
    label_top = AXIS_Y - 0.25 - BAR_STEP * len(groups) - 0.15
    depth = label_top - LINE_STEP * max(len(left), len(right), 1)
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.32 * (max(len(left), 1) + len(groups))))
    ax.set_xlim(1 - pad, k + pad)
    ax.set_ylim(depth - 0.1, AXIS_Y + 0.75)
    ax.axis("off")

    # rank axis with ticks and numbers
    ax.plot([1, k], [AXIS_Y, AXIS_Y], color="black", linewidth=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [AXIS_Y, AXIS_Y + 0.08], color="black", linewidth=1)
        ax.text(r, AXIS_Y + 0.12, str(r), ha="center", va="bottom", fontsize=9)
    for r in range(1, k):
        ax.plot([r + 0.5, r + 0.5], [AXIS_Y, AXIS_Y + 0.04], color="black", linewidth=0.7)

    # CD bar above the axis, from rank 1
    cd_y = AXIS_Y + 0.5
    ax.plot([1, 1 + result.cd], [cd_y, cd_y], color="black", linewidth=1.5)
    for x in (1, 1 + result.cd):
        ax.plot([x, x], [cd_y - 0.05, cd_y + 0.05], color="black", linewidth=1.5)
    ax.text(1 + result.cd / 2, cd_y + 0.07, f"CD = {result.cd:.2f}", ha="center", va="bottom", fontsize=9)

    # each method: a line down from its mean rank, then out to its side, its mean rank and name at the end
    left_edge, right_edge = 1 - 0.3 * pad, k + 0.3 * pad
    for i, method in enumerate(left):  # best nearest the axis: no line crosses another
        _label(ax, method, result.mean_ranks[method], label_top - LINE_STEP * i, left_edge, "right")
    for i, method in enumerate(reversed(right)):  # worst nearest the axis
        _label(ax, method, result.mean_ranks[method], label_top - LINE_STEP * i, right_edge, "left")

    # Nemenyi groups: thick bars between the axis and the label lines
    for g, group in enumerate(groups):
        y = AXIS_Y - 0.25 - BAR_STEP * g
        low, high = result.mean_ranks[group[0]], result.mean_ranks[group[-1]]
        ax.plot([low - 0.05, high + 0.05], [y, y], color="black", linewidth=4, solid_capstyle="butt")

    ax.set_title(f"{title}\nFriedman p = {result.p:.3g} (N = {result.n_columns} columns, k = {k} methods)", fontsize=10)
    return fig


def _label(ax, method: str, rank: float, y: float, edge: float, side: str) -> None:
    ax.plot([rank, rank, edge], [AXIS_Y, y, y], color="black", linewidth=1)
    """The line from ``rank`` on the axis down to ``y`` and out to ``edge``; the name beyond the edge (text
    aligned ``side``), the mean rank above the line's outer end."""
    ax.plot([rank, rank, edge], [AXIS_Y, y, y], color="black", linewidth=1)
    outward = -0.05 if side == "right" else 0.05
    inner = "left" if side == "right" else "right"
    ax.text(edge + outward, y, method, ha=side, va="center", fontsize=9)
    ax.text(edge - outward, y + 0.03, f"{rank:.2f}", ha=inner, va="bottom", fontsize=8)
