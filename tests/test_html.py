"""The leaderboard page (``smartbench table SUITE --format html --out DIR``): the same cells as the
Markdown table, self-contained, and sorting / filtering / the retention view in a real browser
(headless Chromium, Debian package ``chromium``; skipped with the reason where it is not installed)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench.cli.main import main
from bench.reports.html import holm, paired_difference

ROOT = Path(__file__).resolve().parents[1]
V2_ROWS = ROOT / "results" / "leaderboard-v2" / "leaderboard-v2.rows.jsonl"


class BoardParser(HTMLParser):
    """Rows of ``table.board``: [(label, [cell texts]), ...] per tbody, and the header cells."""

    def __init__(self):
        super().__init__()
        self.bodies: list[list[tuple[str, list[str]]]] = []
        self.header: list[dict[str, str]] = []
        self.in_board = self.in_head = False
        self.row: list[str] | None = None
        self.text: list[str] | None = None
        self.depth_details = 0
        self.hidden: list[bool] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "board" in (attrs.get("class") or ""):
            self.in_board = True
        if not self.in_board:
            return
        if tag == "thead":
            self.in_head = True
        elif tag == "tbody":
            self.bodies.append([])
        elif tag == "tr":
            self.row = []
        elif tag in ("th", "td"):
            self.text = []
            if self.in_head and tag == "th":
                self.header.append(attrs)
            elif tag == "td":
                self.hidden.append("hidden" in (attrs.get("class") or ""))
        elif tag in ("ul", "p") and self.text is not None:
            self.depth_details += 1  # the cell's details: not its value

    def handle_endtag(self, tag):
        if not self.in_board:
            return
        if tag == "table":
            self.in_board = False
        elif tag == "thead":
            self.in_head = False
        elif tag in ("ul", "p") and self.depth_details:
            self.depth_details -= 1
        elif tag in ("th", "td") and self.text is not None and self.row is not None:
            self.row.append("".join(self.text).strip())
            self.text = None
        elif tag == "tr" and self.row is not None:
            if not self.in_head and self.bodies and len(self.row) > 1:
                self.bodies[-1].append((self.row[0], self.row[1:]))
            self.row = None

    def handle_data(self, data):
        if self.text is not None and not self.depth_details:
            self.text.append(data)


def parse(page: str) -> BoardParser:
    parser = BoardParser()
    parser.feed(page)
    return parser


def markdown_cells(md: str) -> dict[str, list[str]]:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:]]
    return {row[0]: [cell.replace("**", "") for cell in row[1:]] for row in rows}


@pytest.fixture(scope="module")
def v2_page(tmp_path_factory):
    """The committed leaderboard-v2 rows rendered by ``smartbench table --format html`` (the command's own
    page writer, on the suite expanded once), and the Markdown table of the same rows."""
    import argparse

    from bench.cli.suite_cli import write_page
    from bench.reports.tables import build_table, rows_from_store
    from bench.runs.record import ResultStore
    from bench.suites.suite import load_and_expand

    out = tmp_path_factory.mktemp("page")
    suite, store = load_and_expand("leaderboard-v2"), ResultStore(V2_ROWS)
    frame = rows_from_store(suite, store)
    args = argparse.Namespace(out=str(out), by_task=False, reference="smart")
    assert write_page(args, suite, frame, store) == 0
    md = build_table(frame, suite).render("md")
    return out, (out / "index.html").read_text(encoding="utf-8"), md


def test_html_needs_an_out_folder_before_reading_anything(capsys):
    assert main(["table", "leaderboard-v2", "--rows", str(V2_ROWS), "--format", "html"]) == 2
    assert "--out: --format html writes DIR/index.html" in capsys.readouterr().err


def test_html_cells_equal_the_markdown_cells(v2_page):
    _, page, md = v2_page
    board, expected = parse(page), markdown_cells(md)
    methods, controls = board.bodies
    assert [label for label, _ in controls] == ["dense", "random", "nomask", "scratch"]  # set apart
    assert len(board.header) == 1 + len(next(iter(expected.values())))
    got = {label: cells for label, cells in methods + controls}
    assert got.keys() == expected.keys()
    for label, cells in expected.items():
        assert got[label] == cells, label
    assert "88.85 ± 0.18†" in got["smart"]  # a real v2 cell: bold best with its dagger


def test_the_page_is_self_contained_and_small(v2_page):
    out, page, _ = v2_page
    assert len(page.encode()) <= 2_000_000 and sorted(p.name for p in out.iterdir()) == ["index.html"]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and not re.search(r"<script[^>]+src", page)
    assert "default-src 'none'" in page  # the browser itself refuses any fetch
    assert page.count("<svg") >= 19 and "<figure id='fig-leaderboard-v2-fmnist-resnet-lite-block_1x8'>" in page


def test_cell_details_hold_seeds_run_ids_ci_and_mde(v2_page):
    _, page, _ = v2_page
    rows = [json.loads(line) for line in V2_ROWS.read_text().splitlines()]
    some = next(r for r in rows if r.get("label") == "magnitude")
    assert f"run {some['run_id']} · code {some['provenance']['git_sha'][:7]}" in page
    assert re.search(
        r"vs best \(smart\), 3 paired seeds: -\d+\.\d\d \[95% CI -?\d+\.\d\d, -?\d+\.\d\d\]; p [\d.e-]+, Holm", page
    )
    assert "MDE at 80% power" in page


def test_paired_difference_and_holm_against_scipy():
    from scipy.stats import t, ttest_rel

    from bench.reports.stats import mde_sd_units

    first, second = {0: 1.0, 1: 2.5, 2: 2.0, 3: 4.0}, {0: 0.5, 1: 2.0, 2: 2.2, 3: 3.0}
    diff = paired_difference(first, second)
    d = [first[s] - second[s] for s in range(4)]
    mean, sd = sum(d) / 4, math.sqrt(sum((x - sum(d) / 4) ** 2 for x in d) / 3)
    assert diff["mean"] == pytest.approx(mean) and diff["n"] == 4
    assert diff["ci"] == pytest.approx([mean - t.ppf(0.975, 3) * sd / 2, mean + t.ppf(0.975, 3) * sd / 2])
    assert diff["p"] == pytest.approx(ttest_rel(list(first.values()), list(second.values())).pvalue)
    assert diff["mde"] == pytest.approx(mde_sd_units(4) * sd)  # exact noncentral t (bench.reports.stats)
    assert paired_difference({0: 1.0}, {0: 2.0}) is None
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


# -- in a real browser ---------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium here (apt-get install chromium to run the browser checks)"
)


def chromium(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    args += ["--disable-component-update", "--no-first-run", f"--user-data-dir={tmp / 'profile'}", *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)


def dom(out: Path, fragment: str, tmp: Path) -> BoardParser:
    """The page's DOM after its script ran, at a URL fragment (the page keeps its state there)."""
    result = chromium(f"file://{out / 'index.html'}#{fragment}", tmp, "--dump-dom")
    assert 'data-ready="1"' in result.stdout  # the script ran to its end
    return parse(result.stdout)


@pytest.mark.slow
@needs_chromium
def test_the_browser_renders_sorts_filters_and_fetches_nothing(v2_page, tmp_path):
    out, page, md = v2_page
    expected = markdown_cells(md)
    plain = dom(out, "", tmp_path)
    assert [len(body) for body in plain.bodies] == [10, 4]
    assert len(plain.header) == 20 and not any(plain.hidden)

    by_first = dom(out, "sort=0:desc", tmp_path)  # column 0: fmnist-resnet-lite block 0.5
    labels = [label for label, _ in by_first.bodies[0]]
    means = {label: cells[0] for label, cells in expected.items()}
    value = {label: float(means[label].split(" ")[0]) if means[label] != "–" else -math.inf for label in labels}
    assert labels == sorted(labels, key=lambda label: -value[label]) and labels != [l for l, _ in plain.bodies[0]]
    ascending = [label for label, _ in dom(out, "sort=0:asc", tmp_path).bodies[0]]
    assert ascending[: sum(v > -math.inf for v in value.values())] == sorted(
        [label for label in labels if value[label] > -math.inf], key=lambda label: value[label]
    )

    detection = dom(out, "family=detection", tmp_path)
    shown = [h for h in detection.header[1:] if "hidden" not in (h.get("class") or "")]
    assert shown and all(h["data-family"] == "detection" for h in shown)
    assert len(shown) == sum(h["data-family"] == "detection" for h in plain.header[1:]) < 19
    columns = len(plain.header) - 1
    per_row = [detection.hidden[i : i + columns] for i in range(0, len(detection.hidden), columns)]
    assert all(sum(not h for h in row) == len(shown) for row in per_row)

    retention = dom(out, "view=retention", tmp_path)
    cells = dict(retention.bodies[1])["dense"]
    assert set(cells) == {"1.000"}  # the dense row over itself

    shot = out / "screenshot.png"
    assert page_requests(out / "index.html", tmp_path, f"--screenshot={shot}", "--window-size=1600,1000") == []
    assert shot.stat().st_size > 10_000
    control = tmp_path / "control.html"  # the detector sees a page's own request
    control.write_text("<html><body><img src='http://example.invalid/x.png'></body></html>")
    assert page_requests(control, tmp_path) == ["http://example.invalid/x.png"]


def page_requests(path: Path, tmp: Path, *extra: str) -> list[str]:
    """URLs other than file:/data: that the page itself asked for, from Chromium's net log. The browser's
    own background requests (time, spelling dictionary) carry the initiator "not an origin"; a file://
    page's carry its opaque origin "null"."""
    net_log = tmp / f"net-{path.stem}.json"
    chromium(f"file://{path}", tmp, f"--log-net-log={net_log}", *(extra or ("--dump-dom",)))  # both end the browser
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        url = params.get("url")
        if event["type"] == start and url and params.get("initiator") != "not an origin":
            if not url.startswith(("file:", "data:", "about:", "chrome")):
                urls.append(url)
    return urls
