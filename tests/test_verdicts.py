"""The claim verdicts of `smartbench table --claims` (bench/reports/verdicts.py), on rows whose paired
differences are known: Holm over the track's tests, the outcome of each column, the verdict rule."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy.stats import ttest_rel

from bench.reports.verdicts import claims, markdown

SEEDS = (0, 1, 2, 3)


def rows(task, pattern, sparsity, label, values, metric_name="top1", track="allocation"):
    return [
        dict(
            task=task,
            pattern=pattern,
            sparsity=sparsity,
            label=label,
            seed=s,
            metric=v,
            metric_name=metric_name,
            track=track,
        )
        for s, v in zip(SEEDS, values)
    ]


def frame() -> pd.DataFrame:
    base = [80.0, 81.0, 79.0, 80.5]
    records = []
    # block, classification: SMART +3 on every seed over PDP (p 0), within noise of AWG (inconclusive)
    records += rows("fmnist-resnet-lite", "block:1x8", 0.9, "smart", [b + 3 for b in base])
    records += rows("fmnist-resnet-lite", "block:1x8", 0.9, "pdp", base)
    records += rows("fmnist-resnet-lite", "block:1x8", 0.9, "awg", [b + 3 + d for b, d in zip(base, (2, -3, 1, -1))])
    # channel, segmentation: PDP ahead by 5 everywhere; AWG equal to SMART within 0.1
    records += rows("scenes-seg-lite", "channel", 0.5, "smart", base, "mIoU")
    records += rows("scenes-seg-lite", "channel", 0.5, "pdp", [b + 5 for b in base], "mIoU")
    records += rows(
        "scenes-seg-lite", "channel", 0.5, "awg", [b + d for b, d in zip(base, (0.05, -0.05, 0.1, 0))], "mIoU"
    )
    # the criterion track: the same block column, SMART ahead of PDP by 3; never mixed with the above
    records += rows("fmnist-resnet-lite", "block:1x8", 0.9, "smart", [b + 3 for b in base], track="criterion")
    records += rows("fmnist-resnet-lite", "block:1x8", 0.9, "pdp", base, track="criterion")
    return pd.DataFrame.from_records(records)


def find(found, track, group, baseline):
    return next(c for c in found if (c.track, c.group, c.baseline) == (track, group, baseline))


def test_each_claim_reads_its_columns_on_one_track_with_holm_over_the_track():
    found = claims(frame(), margin=0.5, baselines=("pdp", "awg"))
    block_pdp = find(found, "allocation", "block", "pdp")
    (test,) = block_pdp.tests
    assert (test.diff, test.p, test.outcome) == (pytest.approx(3.0), 0.0, "SMART")
    assert block_pdp.verdict == "supported"
    awg = find(found, "allocation", "block", "awg").tests[0]
    p_awg = ttest_rel([80 + 3, 81 + 3, 79 + 3, 80.5 + 3], [83 + 2, 84 - 3, 82 + 1, 83.5 - 1]).pvalue
    assert awg.diff == pytest.approx(0.25) and awg.p == pytest.approx(p_awg)
    # 4 tests on the allocation track (2 columns x 2 baselines); raw p 0, p_awg, 0 (pdp +5: constant), p_eq
    seg_awg = find(found, "allocation", "segmentation", "awg").tests[0]
    ps = sorted([awg.p, seg_awg.p])
    assert max(awg.p_holm, seg_awg.p_holm) == pytest.approx(max(ps[1], 2 * ps[0]))  # Holm: x2, then x1
    assert awg.outcome == "inconclusive" and find(found, "allocation", "block", "awg").verdict == (
        "not distinguishable at this power"
    )
    assert seg_awg.outcome == "equivalent" and seg_awg.tost_p < 0.05
    assert find(found, "allocation", "segmentation", "awg").verdict == "not supported"  # equal is not "beats"
    seg_pdp = find(found, "allocation", "segmentation", "pdp")
    assert seg_pdp.tests[0].diff == pytest.approx(-5.0) and seg_pdp.tests[0].outcome == "X"
    assert seg_pdp.verdict == "not supported"
    # the channel claim holds the same column as segmentation; N:M and detection have none
    assert find(found, "allocation", "channel", "pdp").tests == seg_pdp.tests
    assert find(found, "allocation", "N:M", "pdp").verdict == "no column"
    assert find(found, "allocation", "detection", "awg").verdict == "no column"
    # the criterion track has its own single test: Holm over 1 test
    crit = find(found, "criterion", "block", "pdp")
    assert crit.verdict == "supported" and crit.tests[0].p_holm == 0.0
    assert find(found, "criterion", "block", "awg").verdict == "no column"


def test_partly_supported_and_lower_is_better_metrics_are_oriented():
    base = [10.0, 12.0, 11.0, 10.5]
    records = rows("t1", "block:1x8", 0.5, "smart", base, "error") + rows(
        "t1", "block:1x8", 0.5, "pdp", [b + 2 for b in base], "error"
    )  # lower error: SMART ahead by 2
    records += rows("t1", "block:1x8", 0.9, "smart", base, "error")
    records += rows("t1", "block:1x8", 0.9, "pdp", [b + d for b, d in zip(base, (1, -1, 2, -2))], "error")
    (claim,) = [c for c in claims(pd.DataFrame.from_records(records), 0.5, ("pdp",)) if c.group == "block"]
    assert [t.diff for t in claim.tests] == [pytest.approx(2.0), pytest.approx(0.0)]
    assert [t.outcome for t in claim.tests] == ["SMART", "inconclusive"]
    assert claim.verdict == "partly supported"
    assert claim.tests[1].mde == pytest.approx(
        __import__("bench.reports.stats", fromlist=["mde"]).mde(pd.Series([1, -1, 2, -2]).std(), 4)
    )


def test_the_markdown_names_every_claim_and_column_once():
    found = claims(frame(), margin=0.5, baselines=("pdp", "awg"))
    text = markdown(found, "demo", 0.5)
    assert "## allocation track" in text and "## criterion track" in text
    assert "| SMART beats PDP on block | supported | 1 / 0 / 0 / 0 of 1 |" in text
    assert "| SMART beats AWG on seg | not supported | 0 / 0 / 1 / 0 of 1 |" in text
    assert "| SMART beats PDP on N:M | no column | - |" in text
    allocation = text.split("## criterion track")[0]
    assert allocation.count("| scenes-seg-lite · channel · 0.5 | PDP |") == 1  # channel and seg share it
    line = next(row for row in allocation.splitlines() if row.startswith("| scenes-seg-lite · channel · 0.5 | PDP |"))
    assert line.startswith("| scenes-seg-lite · channel · 0.5 | PDP | 4 | -5.00 | [-5.00, -5.00] | 0 | 0 |")
    assert line.endswith("| PDP |")  # the baseline named where it is ahead
    with pytest.raises(ValueError, match="margin"):
        claims(frame(), margin=0)


def test_the_table_command_writes_the_claims_at_the_suites_margin(tmp_path, runs_dir, capsys):
    """protocol-v3-check's committed rows: 3 seeds at 2 columns per track. Its suite sets no margin
    (0.5): SMART - AWG on channel, +0.24 [+0.02, +0.46], is equivalent within 0.5; a suite margin
    of 0.2 makes it inconclusive (TOST p > 0.05), and --margin overrides the suite's."""
    import shutil

    import yaml

    from bench.cli.main import main
    from bench.core.errors import ConfigError
    from bench.suites.suite import load_and_expand

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    rows = root / "results" / "protocol-v3-check" / "protocol-v3-check.rows.jsonl"
    source = root / "bench" / "configs" / "suites" / "protocol-v3-check.yaml"
    assert main(["table", str(source), "--rows", str(rows), "--claims", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "protocol-v3-check-claims.md").read_text()
    assert "| SMART beats AWG on channel | not supported | 0 / 0 / 1 / 0 of 1 |" in text
    assert "| fmnist-resnet-lite · channel · 0.5 | AWG | 3 | +0.24 | [+0.02, +0.46] |" in text
    narrow = tmp_path / "narrow" / "protocol-v3-check.yaml"
    narrow.parent.mkdir()
    shutil.copy(source, narrow)
    raw = yaml.safe_load(narrow.read_text())
    narrow.write_text(yaml.safe_dump({**raw, "margin": 0.2}))
    assert load_and_expand(str(narrow)).margin == 0.2
    assert main(["table", str(narrow), "--rows", str(rows), "--claims", "--out", str(tmp_path / "narrow")]) == 0
    narrowed = (tmp_path / "narrow" / "protocol-v3-check-claims.md").read_text()
    assert "| SMART beats AWG on channel | not distinguishable at this power | 0 / 0 / 0 / 1 of 1 |" in narrowed
    assert main(["table", str(narrow), "--rows", str(rows), "--claims", "--margin", "0.5"]) == 0
    assert "| SMART beats AWG on channel | not supported |" in capsys.readouterr().out
    narrow.write_text(yaml.safe_dump({**raw, "margin": 0}))
    with pytest.raises(ConfigError, match="suite.margin"):
        load_and_expand(str(narrow))
