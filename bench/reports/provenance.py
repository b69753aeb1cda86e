"""Method versions of a table's rows (protocol v3 provenance).

Every pruner declares a ``method_version`` (``bench.core.pruner.Pruner``; bumped whenever its
behaviour changes), which enters the run id when it is not 1 and which every row records (rows
written before rows recorded it are version 1: their ids were made before any bump). A table
column must not average rows of two versions of one method: :func:`mixed_versions` names the
columns that would, and ``smartbench table`` refuses them unless ``--allow-mixed-versions``.
:func:`version_lines` is the per-version row count a provenance section states.

The rows are ``bench.reports.tables.suite_rows`` output: complete store rows, each with its cell's
``label``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any


def row_version(row: dict[str, Any]) -> int:
    """The row's ``method_version``; 1 for rows written before rows recorded it."""
    version = row.get("method_version")
    return 1 if version is None else int(version)


def _sparsity(row: dict[str, Any]) -> str:
    value = row.get("target_sparsity", row.get("sparsity"))
    return "?" if value is None else f"{float(value):g}"


def mixed_versions(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (label, task, pattern, sparsity) column whose rows of one label carry more than
    one ``method_version``, with the count of rows at each; empty when no column mixes versions."""
    columns: dict[tuple, Counter] = defaultdict(Counter)
    for row in rows:
        key = (str(row.get("label", row.get("pruner"))), str(row.get("task")), str(row.get("pattern")), _sparsity(row))
        columns[key][row_version(row)] += 1
    lines = []
    for (label, task, pattern, sparsity), counts in columns.items():
        if len(counts) > 1:
            versions = ", ".join(f"v{version}: {n} row(s)" for version, n in sorted(counts.items()))
            lines.append(f"{label} on {task} {pattern} {sparsity}: {versions}")
    return lines


def version_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown list lines of the rows per (pruner, method_version), e.g.
    ``- 40 row(s) of smart at method_version 2``, in pruner then version order."""
    counts = Counter((str(row.get("pruner")), row_version(row)) for row in rows)
    return [f"- {n} row(s) of {pruner} at method_version {version}" for (pruner, version), n in sorted(counts.items())]
