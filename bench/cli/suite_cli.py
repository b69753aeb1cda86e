"""``smartbench suite plan|status|run NAME`` and ``smartbench table NAME`` (imported by bench.cli.main)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from bench.cli.args import add_device_arguments

EXTENSIONS = {"md": "md", "latex": "tex", "csv": "csv", "html": "html"}


# -- cell selection ----------------------------------------------------------------------------
SELECT_KEYS = ("task", "pruner", "pattern", "sparsity", "seed")


def _cell_value(cell, key: str) -> str:
    value = cell.label if key == "pruner" else getattr(cell.spec, key)
    return f"{value:g}" if isinstance(value, float) else str(value)


def select_cells(suite, only: list[str] | None):
    """The suite restricted to the cells matching every ``KEY=V1,V2`` of ``only`` (a slice of a big
    suite: same cells, same run ids, same suite name, so its rows count for the whole table)."""
    from dataclasses import replace

    from bench.core.errors import ConfigError

    cells = suite.placed()
    for item in only or []:
        key, _, values = item.partition("=")
        if key not in SELECT_KEYS or not values:
            raise ConfigError(
                "--only", f"expected KEY=VALUE[,VALUE...] with KEY one of {', '.join(SELECT_KEYS)}, got {item!r}"
            )
        wanted = [v.strip() for v in values.split(",")]
        present = sorted({_cell_value(c, key) for c in suite.placed()})
        unknown = [v for v in wanted if v not in present]
        if unknown:
            raise ConfigError(
                "--only", f"{key} {', '.join(unknown)} is not in suite {suite.name}; allowed: {', '.join(present)}"
            )
        cells = [c for c in cells if _cell_value(c, key) in wanted]
    if not only:
        return suite
    runs = list({c.run_id: c for c in reversed(cells)}.values())[::-1]  # a shared run (nomask) once, first placement
    return replace(suite, cells=runs, placements=cells)


# -- plan and status ---------------------------------------------------------------------------
def plan_lines(suite) -> list[str]:
    """The cells of an expanded suite with their run ids and budgets, skipped cells, total budget."""
    cells = suite.cells
    lines = [
        f"suite {suite.name} ({suite.path}): {len(cells)} cells, {len(suite.skipped)} skipped"
        + (" [plan only]" if suite.plan_only else "")
    ]
    if suite.description:
        lines.append(f"  {suite.description.strip()}")
    lines.append(
        f"  {'run_id':16s} {'task':18s} {'pruner':18s} {'pattern':12s} {'sparsity':>8s} {'seed':>4s} "
        f"{'epochs':>6s} {'steps':>7s}"
    )
    for c in cells:
        lines.append(
            f"  {c.run_id:16s} {c.spec.task:18s} {c.label:18s} {c.spec.pattern:12s} {c.spec.sparsity:8.4g} "
            f"{c.spec.seed:4d} {_num(c.epochs):>6s} {_num(c.steps):>7s}"
        )
    for note in suite.skipped:
        lines.append(f"  skipped: {note}")
    if suite.tune is not None:
        from bench.suites.tuned import held_out_warning

        warning = held_out_warning(suite)  # a ConfigError instead with held_out_seed: true
        if warning:
            lines.append(f"  tuning: {warning}")
        if suite.tuned is None:
            lines.append(
                f"  tuning: not tuned yet ({suite.tune.file} missing): cells use the defaults; "
                f"`smartbench tune {suite.name}` tunes them"
            )
        elif suite.untuned:
            lines.append(f"  tuning: {suite.tune.file} lacks {', '.join(suite.untuned)}: `suite run` refuses")
        else:
            lines.append(f"  tuning: every cell uses its tuned config from {suite.tune.file}")
    missing = sorted({c.spec.task for c in cells if not c.registered})
    if missing:
        lines.append(
            f"  note: task(s) {', '.join(missing)} not registered or not importable here: their ids are "
            "computed from the spec alone (spec-...); the real run ids appear once the tasks exist"
        )
    lines.append("  budget: " + budget_summary(cells))
    return lines


def budget_summary(cells: list) -> str:
    """Epochs and optimizer steps of the cells, plus the dense models they share (once per (task, seed))."""
    known = [c for c in cells if c.registered]
    dense = list({c.dense_key: c for c in known}.values())
    steps = [c.steps for c in known] + [c.dense_steps for c in dense]
    text = (
        f"{sum(c.epochs for c in known)} prune+finetune epochs ({sum(s or 0 for s in steps[: len(known)])} steps) "
        f"over {len(known)} runs, plus {sum(c.dense_epochs for c in dense)} dense epochs "
        f"({sum(s or 0 for s in steps[len(known) :])} steps) for {len(dense)} dense model(s) shared per (task, seed)"
    )
    if None in steps:
        text += "; steps not counted where the dataset is not on this machine"
    if len(known) < len(cells):
        text += f"; unknown for {len(cells) - len(known)} cell(s) whose task is not available here"
    return text


def _num(value: int | None) -> str:
    return "?" if value is None else str(value)


def status_lines(suite, store=None, paths=None) -> list[str]:
    """One line per cell (run id, state, rows in the store) and the totals."""
    from bench.suites.suite import cell_states

    states = cell_states(suite, store, paths)
    lines = [
        f"{c.run_id:16s} {state:8s} rows {rows}  {c.spec.task} {c.label} {c.spec.pattern} {c.spec.sparsity:g} "
        f"seed {c.spec.seed}"
        for c, state, rows in states
    ]
    totals = Counter(state for _, state, _ in states)
    lines.append(
        f"suite {suite.name}: " + ", ".join(f"{totals[s]} {s}" for s in ("done", "running", "pending", "failed"))
    )
    return lines


def cmd_plan(args) -> int:
    from bench.core.paths import RunPaths
    from bench.suites.estimate import estimate_lines, estimate_suite, positive_int
    from bench.suites.suite import load_and_expand

    # the estimate's inputs are checked before the suite is expanded (a bad value fails at once)
    calibrate = None if args.calibrate is None else positive_int(args.calibrate, "--calibrate", "timed optimizer steps")
    batch = None
    if args.calibrate_batch is not None:
        batch = positive_int(args.calibrate_batch, "--calibrate-batch", "images per calibration step")
    suite = select_cells(load_and_expand(args.name, args.device, args.amp, args.compile), args.only)
    print("\n".join(plan_lines(suite)), flush=True)
    if args.estimate or calibrate is not None or batch is not None:
        estimate = estimate_suite(suite, args.device, calibrate, batch, RunPaths.from_env())
        print("\n".join(estimate_lines(estimate)))
    return 0


def cmd_status(args) -> int:
    from bench.core.paths import RunPaths
    from bench.suites.suite import load_and_expand

    print("\n".join(status_lines(select_cells(load_and_expand(args.name), args.only), paths=RunPaths.from_env())))
    return 0


def cmd_speed(args) -> int:
    """Runtime latency of every finished cell that has no stored result for the runtime (resumable:
    measured cells are skipped unless --redo); a cell whose export or measurement fails is reported
    and the others go on."""
    from bench.cli.speed_cli import _batch_sizes, check_timing
    from bench.core.paths import RunPaths
    from bench.deploy.ort_speed import RATIO_FIELD, check_runtime, measure_runtime, result_path, write_result
    from bench.suites.suite import cell_states, load_and_expand

    check_runtime(args.runtime)
    sizes = _batch_sizes(args.batch_sizes)
    check_timing(args)
    paths = RunPaths.from_env()
    suite = select_cells(load_and_expand(args.name), args.only)
    done = list(dict.fromkeys(cell.run_id for cell, state, _ in cell_states(suite, paths=paths) if state == "done"))
    todo = [run_id for run_id in done if args.redo or not result_path(run_id, args.runtime, paths).is_file()]
    print(f"suite {suite.name}: {len(done)} finished cell(s), {len(todo)} to measure in {args.runtime}")
    failed = 0
    for i, run_id in enumerate(todo, 1):
        try:
            result = measure_runtime(run_id, args.runtime, sizes, args.threads, args.warmup, args.repeats, paths)
        except Exception as err:  # noqa: BLE001 — one cell's failure is reported; the others go on
            failed += 1
            print(f"[{i}/{len(todo)}] {run_id} failed: {type(err).__name__}: {err}")
            continue
        write_result(result, run_id, None, paths)
        ratios = " ".join(f"b{bs} x{r:.3f}" for bs, r in result[RATIO_FIELD[args.runtime]].items())
        print(f"[{i}/{len(todo)}] {run_id} latency ratio {ratios}, FLOPs x{result['flops']['ratio']:.3f}")
    print(f"measured {len(todo) - failed}, failed {failed}")
    return 1 if failed else 0


def cmd_run(args) -> int:
    from bench.core.paths import RunPaths
    from bench.suites.suite import load_and_expand
    from bench.suites.suite_run import run_suite

    suite = select_cells(
        load_and_expand(args.name, args.device, args.amp, args.compile), args.only
    )  # all validated first
    if args.launcher == "slurm":  # the cost of what is about to be submitted, and the job settings it suggests
        from bench.suites.estimate import estimate_lines, estimate_suite, slurm_lines

        estimate = estimate_suite(suite, args.device, paths=RunPaths.from_env(), any_machine=True)
        print("\n".join(estimate_lines(estimate) + slurm_lines(estimate, args.timeout_min, args.nproc)), flush=True)
    slurm = {
        "timeout_min": args.timeout_min,
        "slurm_partition": args.partition,
        "slurm_account": args.account,
        "gpus_per_node": args.gpus_per_node,
        "cpus_per_task": args.cpus_per_task,
    }
    return run_suite(
        suite,
        workers=args.workers,
        launcher=args.launcher,
        nproc=args.nproc,
        wandb_project=args.wandb_project,
        progress=not args.no_progress,
        cluster=args.cluster,
        slurm=slurm,
        paths=RunPaths.from_env(),
        sync_bn=args.sync_bn,
    )


def by_track(frame, name: str):
    """(name, rows) per protocol track of the frame: the name itself with one track, else
    ``<name>-<track>`` (summaries and figures never mix the tracks)."""
    from bench.reports.tables import tracks_in

    tracks = tracks_in(frame)
    if len(tracks) == 1:
        yield name, frame
        return
    for track in tracks:
        yield f"{name}-{track or 'v1'}", frame[frame["track"].fillna("") == track]


def cmd_table(args) -> int:
    from bench.core.errors import ConfigError
    from bench.reports.plots import write_plots
    from bench.reports.provenance import mixed_versions
    from bench.reports.ranks import summary_markdown
    from bench.reports.tables import (
        build_table,
        provenance_markdown,
        rows_from_store,
        rows_from_wandb,
        suite_rows,
        tracks_in,
    )
    from bench.runs.record import ResultStore
    from bench.suites.suite import load_and_expand

    if args.rows is not None and not Path(args.rows).is_file():
        raise ConfigError("--rows", f"no such file: {args.rows} (a JSON-lines file written by --raw)")
    if args.raw and not args.out:
        raise ConfigError("--raw", "needs --out (the folder the rows file is written to)")
    if args.margin is not None and not args.margin > 0:
        raise ConfigError("--margin", f"must be a number of metric points > 0, got {args.margin:g}")
    if args.format == "html" and not args.out:
        raise ConfigError("--out", "--format html writes DIR/index.html: give the folder with --out DIR")
    suite = load_and_expand(args.name)
    store = ResultStore(Path(args.rows)) if args.rows is not None else None
    if args.rows is not None:
        frame = rows_from_store(suite, store)
        if frame.attrs.get("dropped"):
            print(
                f"note: {frame.attrs['dropped']} row(s) of {args.rows} match no cell of the suite "
                "(another code version?); left out",
                file=sys.stderr,
            )
    elif args.source == "wandb":
        frame = rows_from_wandb(suite, args.project or suite.wandb_project)
        if frame.attrs.get("dropped"):
            print(
                f"note: {frame.attrs['dropped']} W&B run(s) of group {suite.name} match no cell of the suite "
                "(another code version?); left out",
                file=sys.stderr,
            )
    else:
        frame = rows_from_store(suite)
    # a column averages the rows of one method version (bench.reports.provenance); the W&B source
    # is not checked here (its rows are summaries, not the store's)
    mixed = [] if args.rows is None and args.source == "wandb" else mixed_versions(suite_rows(suite, store))
    if mixed and not args.allow_mixed_versions:
        raise ConfigError(
            "--allow-mixed-versions",
            f"{len(mixed)} column(s) hold rows of more than one method_version of a pruner: "
            + "; ".join(mixed)
            + "; rerun the older cells or pass --allow-mixed-versions",
        )
    if frame.empty:
        print(f"suite {suite.name}: no finished cells yet (smartbench suite status {args.name})")
        return 1
    if args.track is not None:  # one protocol track only
        if args.track not in tracks_in(frame):
            raise ConfigError(
                "--track", f"no rows of track {args.track!r}; the rows hold {', '.join(tracks_in(frame))}"
            )
        frame = frame[frame["track"] == args.track]
    if args.format == "html":
        return write_page(args, suite, frame, store)
    marks = args.marks or suite.marks
    args.margin = suite.margin if args.margin is None else args.margin  # the suite's, unless given
    stats = {"cost": args.cost, "marks": marks, "margin": args.margin}
    tables = {}
    for stem, part in by_track(frame, suite.name):  # one table per protocol track, each named
        if not args.by_task:
            tables[stem] = build_table(part, suite, **stats)
            continue
        for task in dict.fromkeys(part["task"]):  # one table per task (a wide suite's columns do not fit one page)
            table = build_table(part[part["task"] == task], suite, **stats)
            table.suite_name = f"{suite.name} · {task}" + (f" · {table.track} track" if table.track else "")
            tables[f"{stem}-{task}"] = table
    for stem, table in tables.items():
        text = table.render(args.format)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{stem}.{EXTENSIONS[args.format]}"
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        else:
            print(text, end="" if text.endswith("\n") else "\n")
    if args.raw:
        path = Path(args.out) / f"{suite.name}.rows.jsonl"
        rows = suite_rows(suite, store)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")
        tmp.replace(path)
        print(f"wrote {path} ({len(rows)} rows)")
    if args.claims:
        from bench.reports.verdicts import claims, markdown

        _emit(args.out, f"{suite.name}-claims.md", markdown(claims(frame, args.margin), suite.name, args.margin))
    if args.summary:
        summary = "\n".join(  # per protocol track: ranks and verdicts never mix the tracks
            summary_markdown(part, name, args.reference, marks, args.margin)
            for name, part in by_track(frame, suite.name)
        )
        summary += "\n" + provenance_markdown(suite_rows(suite, store), suite.name)
        _emit(args.out, f"{suite.name}-summary.md", summary)
    if args.plot:
        from bench.core.paths import RunPaths

        folder = Path(args.out) if args.out else RunPaths.from_env().root / "tables" / suite.name
        for path in (p for name, part in by_track(frame, suite.name) for p in write_plots(part, name, folder)):
            print(f"wrote {path}")
    return 0


def _emit(out: str | None, file_name: str, text: str) -> None:
    """``text`` to ``out/file_name`` (saying so), or to stdout without ``--out``."""
    if out:
        path = Path(out) / file_name
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    else:
        print("\n" + text, end="")


def write_page(args, suite, frame, store) -> int:
    """``--format html``: the suite's page, ``DIR/index.html`` (bench.reports.html)."""
    from bench.core.errors import ConfigError
    from bench.reports.html import inline_figures, render_html
    from bench.reports.ranks import summary_markdown
    from bench.reports.tables import build_table, provenance_markdown, suite_rows

    if args.by_task:
        raise ConfigError("--by-task", "not with --format html: the page filters its columns by task family")
    rows = suite_rows(suite, store)
    marks = getattr(args, "marks", None) or suite.marks
    margin = suite.margin if getattr(args, "margin", None) is None else args.margin
    page = render_html(
        build_table(frame, suite, marks=marks, margin=margin),
        frame,
        rows,
        summary_markdown(frame, suite.name, args.reference, marks, margin),
        provenance_markdown(rows, suite.name),
        inline_figures(frame, suite.name),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    print(f"wrote {path} ({len(page.encode()) / 1e6:.2f} MB)")
    return 0


def cmd_tune(args) -> int:
    from bench.core.errors import ConfigError
    from bench.core.paths import RunPaths
    from bench.suites.suite import expand, load_suite
    from bench.suites.tune import run_tune, schedule_suite, trial_suite

    suite = expand(load_suite(args.name, tuned=False), args.device, args.amp, args.compile)  # every input checked first
    if suite.tune is None:
        raise ConfigError("suite.tune", f"suite '{suite.name}' has no `tune:` key (trials, file, columns)")
    if args.plan:
        if suite.tune.schedules:
            choice, _ = schedule_suite(suite, suite.tune, args.device, args.amp, args.compile)
            print(f"first, the fine-tuning schedule of each family ({', '.join(suite.tune.schedules)}):")
            for line in plan_lines(choice):
                print(line)
            print("then the trials, each family with its chosen schedule (shown: the block's own):")
        extra = ()
        if args.extend_edges:  # the one step beyond the grid's edge for the pairs that won there
            from bench.suites.tune import edge_trials
            from bench.suites.tuned import read_tuned

            extra = edge_trials(read_tuned(suite.tune, suite.name) or {}, suite.tune)
        trials, _ = trial_suite(suite, suite.tune, args.device, args.amp, extra=extra, compile=args.compile)
        for line in plan_lines(trials):
            print(line)
        return 0
    return run_tune(
        suite,
        suite.tune,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        compile=args.compile,
        progress=not args.no_progress,
        paths=RunPaths.from_env(),
        extend_edges=args.extend_edges,
    )


def cmd_columns(args) -> int:
    from bench.core.errors import ConfigError
    from bench.core.paths import RunPaths
    from bench.runs.record import ResultStore
    from bench.suites.columns import choose_columns, column_suite, report
    from bench.suites.suite import load_suite
    from bench.suites.suite_run import run_suite

    try:
        candidates = tuple(float(v) for v in args.candidates.split(","))
    except ValueError:
        raise ConfigError("--candidates", f"expected comma-separated sparsities, got {args.candidates!r}") from None
    if not 0 <= args.low < args.high:
        raise ConfigError("--low", f"need 0 <= --low < --high, got {args.low} and {args.high}")
    try:
        pilot = tuple(int(v) for v in args.pilot_seeds.split(","))
    except ValueError:
        raise ConfigError("--pilot-seeds", f"expected comma-separated seeds, got {args.pilot_seeds!r}") from None
    if args.margin is not None and (args.margin <= 0 or len(pilot) < 2):
        raise ConfigError("--margin", "the power criterion needs a margin > 0 and >= 2 --pilot-seeds (e.g. 0,1,2)")
    if args.planned_seeds < 2 or args.seed_cap < args.planned_seeds:
        raise ConfigError("--planned-seeds", "need 2 <= --planned-seeds <= --seed-cap")
    suite = load_suite(args.name, tuned=False)
    columns = select_cells(column_suite(suite, candidates, args.device, pilot, args.amp, args.compile), args.only)
    paths = RunPaths.from_env()
    if not args.report_only:
        code = run_suite(columns, workers=args.workers, progress=not args.no_progress, paths=paths)
        if code:
            return code
    store = ResultStore(paths.store)
    rows = store.get_many(cell.run_id for cell in columns.cells)
    choices = choose_columns(
        columns.placed(), rows, args.low, args.high, args.margin, args.planned_seeds, args.seed_cap
    )
    print(report(choices, args.low, args.high))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    suite = sub.add_parser("suite", help="leaderboard suites: plan, status, run")
    actions = suite.add_subparsers(dest="suite_command", required=True)
    name_help = "a suite in bench/configs/suites (e.g. smoke, quick) or a path to a .yaml file"
    only_help = (
        f"only the cells with KEY ({', '.join(SELECT_KEYS)}) in the listed values; repeatable, "
        "e.g. --only task=fmnist-resnet --only seed=0,1"
    )

    plan = actions.add_parser("plan", help="list the cells, their run ids and the budget; runs nothing")
    plan.add_argument("name", help=name_help)
    plan.add_argument("--only", action="append", metavar="KEY=V1[,V2]", help=only_help)
    plan.add_argument(
        "--estimate",
        action="store_true",
        help="also the expected cost of every unfinished cell and of the suite in GPU-hours (CPU-hours on the CPU), "
        "from stored step times (runs/calibration.json) or a short calibration",
    )
    plan.add_argument(
        "--calibrate",
        default=None,
        metavar="N",
        help="time N optimizer steps (after 1 warm-up) of the dense model and of each pruner now, store them "
        "(implies --estimate; default: stored measurements, else 3 steps)",
    )
    plan.add_argument(
        "--calibrate-batch",
        default=None,
        metavar="B",
        help="images per calibration step (default: the task's batch on CUDA; on the CPU at most 8 ImageNet-size "
        "images for the dense step, 2 for the pruners; the dense step is scaled linearly to the task's batch)",
    )
    add_device_arguments(plan)
    plan.set_defaults(func=cmd_plan)

    status = actions.add_parser("status", help="one line per cell: run id, state, rows in the store")
    status.add_argument("name", help=name_help)
    status.add_argument("--only", action="append", metavar="KEY=V1[,V2]", help=only_help)
    status.set_defaults(func=cmd_status)

    speed = actions.add_parser(
        "speed",
        help="runtime latency (pruned / dense export) of every finished cell without one; tables show it (--cost)",
    )
    speed.add_argument("name", help=name_help)
    speed.add_argument("--only", action="append", metavar="KEY=V1[,V2]", help=only_help)
    speed.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "openvino"))
    speed.add_argument("--batch-sizes", default="1,64")
    speed.add_argument("--threads", type=int, default=1)
    speed.add_argument("--warmup", type=int, default=5)
    speed.add_argument("--repeats", type=int, default=30)
    speed.add_argument("--redo", action="store_true", help="measure cells that already have a result again")
    speed.set_defaults(func=cmd_speed)

    run = actions.add_parser("run", help="run every unfinished cell (resumable; finished cells are skipped)")
    run.add_argument("name", help=name_help)
    run.add_argument("--only", action="append", metavar="KEY=V1[,V2]", help=only_help)
    run.add_argument(
        "--workers", type=int, default=1, help="cells in parallel (local: processes sharing the CPU threads)"
    )
    run.add_argument("--launcher", choices=("local", "torchrun", "slurm"), default="local")
    add_device_arguments(run)
    run.add_argument("--nproc", type=int, default=1, help="processes per run (DDP) with --launcher torchrun/slurm")
    run.add_argument(
        "--sync-bn",
        action="store_true",
        help="DDP ranks (--nproc >= 2) on CUDA use SyncBatchNorm: statistics over the global batch, not per shard",
    )
    run.add_argument("--wandb-project", default=None, help="W&B project (one W&B run per cell, group = suite name)")
    run.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    slurm = run.add_argument_group("slurm (submitit)")
    slurm.add_argument("--cluster", default=None, help="submitit cluster: slurm (default when available) or local")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--timeout-min", type=int, default=24 * 60)
    slurm.add_argument("--gpus-per-node", type=int, default=None)
    slurm.add_argument("--cpus-per-task", type=int, default=None)
    run.set_defaults(func=cmd_run)

    tune = sub.add_parser(
        "tune", help="equal tuning: the same number of trials for every pruner, on the validation split"
    )
    tune.add_argument("name", help=name_help)
    tune.add_argument("--plan", action="store_true", help="list the trials and their run ids; run nothing")
    tune.add_argument(
        "--extend-edges",
        action="store_true",
        help="one more trial one lr step beyond the grid's edge for every (label, family) whose choice won there",
    )
    tune.add_argument("--workers", type=int, default=1, help="trials in parallel (processes sharing the CPU threads)")
    add_device_arguments(tune)
    tune.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    tune.set_defaults(func=cmd_tune)

    columns = actions.add_parser(
        "columns",
        help="the protocol's column rule: sparsities where uniform magnitude loses LOW-HIGH val points vs nomask",
    )
    columns.add_argument("name", help=name_help)
    columns.add_argument(
        "--candidates", default="0.5,0.7,0.8,0.9,0.95,0.98", help="comma-separated candidate sparsities"
    )
    columns.add_argument("--low", type=float, default=1.0, help="smallest val gap (points) a column must show")
    columns.add_argument("--high", type=float, default=15.0, help="largest val gap (points) a column may show")
    columns.add_argument("--only", action="append", metavar="KEY=V1[,V2]", help="e.g. --only task=fmnist-resnet")
    columns.add_argument("--pilot-seeds", default="0", help="seeds of the pilot runs (>= 2 for the power criterion)")
    columns.add_argument(
        "--margin",
        type=float,
        default=None,
        help="the power criterion: a column enters only when its MDE at --planned-seeds is within this many points",
    )
    columns.add_argument("--planned-seeds", type=int, default=3, help="seeds a column will run (power criterion)")
    columns.add_argument("--seed-cap", type=int, default=10, help="the most seeds the report would suggest")
    columns.add_argument("--workers", type=int, default=1)
    columns.add_argument("--report-only", action="store_true", help="report from the store; run nothing")
    add_device_arguments(columns)
    columns.add_argument("--no-progress", action="store_true")
    columns.set_defaults(func=cmd_columns)

    table = sub.add_parser("table", help="paper-style result table (and plots) of a suite")
    table.add_argument("name", help=name_help)
    table.add_argument(
        "--format",
        choices=("md", "latex", "csv", "html"),
        default="md",
        help="html: one self-contained page, DIR/index.html (needs --out DIR)",
    )
    table.add_argument("--out", default=None, help="folder for the table file (and plots); default: print the table")
    table.add_argument(
        "--plot",
        action="store_true",
        help="also write PNG figures: metric vs sparsity, metric vs FLOPs (Pareto), per-layer allocation, vs speed",
    )
    table.add_argument(
        "--cost",
        action="store_true",
        help="md/LaTeX: also the cost table -- FLOPs kept and the measured runtime latency ratios "
        "(smartbench suite speed) of every cell",
    )
    table.add_argument(
        "--claims",
        action="store_true",
        help="also the verdict on each of the paper's claims (SMART beats PDP/PaS/AWG/AC/DC on block, channel, "
        "N:M, det, seg) per track: paired differences, Holm, TOST (bench/reports/verdicts.py); NAME-claims.md",
    )
    table.add_argument(
        "--summary",
        action="store_true",
        help="also the mean rank of every pruner over the columns (bootstrap CI) and --reference's win/tie/loss",
    )
    table.add_argument("--reference", default="smart", help="the label whose win/tie/loss --summary counts")
    table.add_argument(
        "--marks",
        choices=("v3", "v2"),
        default=None,
        help="the statistics behind the marks: v3 (Holm over the table, TOST equivalence, inconclusive) or v2 "
        "(raw paired p, as leaderboard-v2 was committed); default: the suite's `marks:` (v3)",
    )
    table.add_argument(
        "--track",
        choices=("criterion", "allocation"),
        default=None,
        help="only the rows of this protocol track (uniform allocation / global allocation and transplants); "
        "default: every track, one table each (the web page needs one)",
    )
    table.add_argument(
        "--margin",
        type=float,
        default=None,
        help="v3: the equivalence margin in metric points (≡ = within +-margin of the best by a paired TOST); "
        "default: the suite's `margin` (0.5 when it sets none)",
    )
    table.add_argument(
        "--from",
        dest="source",
        choices=("store", "wandb"),
        default="store",
        help="rows from the local result store (default) or from W&B (group = suite name)",
    )
    table.add_argument("--project", default=None, help="W&B project (ENTITY/PROJECT) with --from wandb")
    table.add_argument(
        "--by-task",
        action="store_true",
        help="one table per task (<suite>-<task>.<ext> with --out) instead of one table of every column",
    )
    table.add_argument(
        "--raw",
        action="store_true",
        help="with --out, also write <suite>.rows.jsonl: the complete row of every finished cell "
        "(per-layer audit, provenance), enough to regenerate the table without the store",
    )
    table.add_argument(
        "--rows",
        default=None,
        help="read the rows from this JSON-lines file (e.g. a committed --raw file), not the store",
    )
    table.add_argument(
        "--allow-mixed-versions",
        action="store_true",
        help="tabulate columns whose rows of one pruner label carry different method_versions "
        "(refused by default: rerun the older cells)",
    )
    table.set_defaults(func=cmd_table)
