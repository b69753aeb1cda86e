"""The fast mmcv build (scripts/mmcv_unity.py + scripts/build_mmcv.sh): its grouping covers every
source of the plain CPU build exactly once, it refuses unexpected trees without touching them, and
the installed mmcv ops (whichever way they were built) agree with torchvision's."""

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mmcv_unity.py"
spec = importlib.util.spec_from_file_location("mmcv_unity", SCRIPT)
unity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(unity)

mmcv = pytest.importorskip("mmcv")
pytestmark = pytest.mark.mm

# the wheel ships mmcv/ops/csrc, so the installed package is an mmcv source layout
INSTALLED = Path(mmcv.__file__).resolve().parents[1]


def test_groups_cover_the_plain_sources_once():
    unity.check(INSTALLED)
    units = unity.groups(INSTALLED)
    assert all(p.parent.name == "pytorch" for p in units["unity_ops.cpp"])
    assert len(units["unity_ops.cpp"]) == 56
    kernels = {u: [p.stem for p in files] for u, files in units.items() if u != "unity_ops.cpp"}
    assert all(p.parent.name == "cpu" for u in kernels for p in units[u])
    assert kernels["unity_cpu_b.cpp"][-1] == "psamask"  # its min/max macros come last
    for unit in map(set, kernels.values()):  # each defines its own PreCalc / bilinear helpers
        assert len(unit & {"roi_align", "roi_align_rotated", "bezier_align"}) <= 1
        assert not {"rotated_feature_align", "bezier_align"} <= unit
    assert sum(len(v) for v in units.values()) + 1 == len(unity.plain_sources(INSTALLED)) == 77


def _fake_tree(root: Path, setup_text: str, version: str = "2.1.0") -> Path:
    src = root / "mmcv-src"
    shutil.copytree(INSTALLED / "mmcv" / "ops" / "csrc" / "pytorch", src / "mmcv" / "ops" / "csrc" / "pytorch")
    (src / "mmcv" / "version.py").write_text(f"__version__ = '{version}'\n")
    (src / "setup.py").write_text(setup_text)
    return src


SETUP = (
    "        if True:\n"
    "                extra_compile_args['cxx'] = ['-std=c++17']\n"
    "        else:\n" + unity.CPU_BRANCH + "            include_dirs.append('x')\n"
)


def test_patch_writes_units_that_include_every_source(tmp_path):
    src = _fake_tree(tmp_path, SETUP)
    unity.patch(src)
    setup = (src / "setup.py").read_text()
    assert unity.UNITY_BRANCH in setup and "'-std=c++20', '-g0'" in setup and unity.CPU_BRANCH not in setup
    out = src / "mmcv" / "ops" / "csrc" / "unity"
    included = []
    for unit in sorted(out.glob("*.cpp")):
        for line in unit.read_text().splitlines()[1:]:
            rel = line.removeprefix('#include "').removesuffix('"')
            included.append((out / rel).resolve())
    assert all(p.is_file() for p in included)
    assert len(included) + 1 == len(set(included)) + 1 == len(unity.plain_sources(src))


@pytest.mark.parametrize(
    "setup,version",
    [(SETUP.replace("only with CPU", "with CPU"), "2.1.0"), (SETUP, "2.2.0"), (SETUP + unity.CPU_BRANCH, "2.1.0")],
)
def test_patch_refuses_an_unexpected_tree_and_leaves_it_untouched(tmp_path, setup, version):
    src = _fake_tree(tmp_path, setup, version)
    with pytest.raises(SystemExit, match="mmcv_unity"):
        unity.patch(src)
    assert (src / "setup.py").read_text() == setup
    assert not (src / "mmcv" / "ops" / "csrc" / "unity").exists()


def test_installed_ops_agree_with_torchvision():
    torchvision = pytest.importorskip("torchvision")
    from mmcv.ops import batched_nms, bbox_overlaps, deform_conv2d, nms, roi_align, roi_align_rotated

    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(300, 4, generator=g) * 60
    boxes[:, 2:] += boxes[:, :2] + 1
    scores = torch.rand(300, generator=g)
    _, keep = nms(boxes, scores, 0.5)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))
    idx = torch.randint(0, 3, (300,), generator=g)
    _, keep = batched_nms(boxes, scores, idx, dict(type="nms", iou_threshold=0.5))
    assert torch.equal(keep, torchvision.ops.batched_nms(boxes, scores, idx, 0.5))
    x = torch.randn(2, 8, 32, 32, generator=g)
    rois = torch.tensor([[0, 1.0, 2, 20, 25], [1, 3, 4, 30, 31], [0, 0.5, 0.5, 8, 9]])
    got = roi_align(x, rois, (7, 7), 0.5, 2, "avg", True)
    torch.testing.assert_close(got, torchvision.ops.roi_align(x, rois, (7, 7), 0.5, 2, True))
    # roi_align_rotated at angle 0 is roi_align of the same box (unity_cpu_c)
    cx, cy, w, h = (
        (rois[:, 1] + rois[:, 3]) / 2,
        (rois[:, 2] + rois[:, 4]) / 2,
        rois[:, 3] - rois[:, 1],
        rois[:, 4] - rois[:, 2],
    )
    rotated = torch.stack([rois[:, 0], cx, cy, w, h, torch.zeros(3)], 1)
    torch.testing.assert_close(roi_align_rotated(x, rotated, (7, 7), 0.5, 2, True), got)
    # bbox_overlaps (unity_cpu_a) and deform_conv2d (unity_cpu_a)
    torch.testing.assert_close(
        bbox_overlaps(boxes[:20], boxes[20:50]), torchvision.ops.box_iou(boxes[:20], boxes[20:50])
    )
    weight = torch.randn(4, 8, 3, 3, generator=g)
    offset = torch.randn(2, 18, 32, 32, generator=g)
    torch.testing.assert_close(
        deform_conv2d(x, offset, weight, 1, 1, 1, 1, 1), torchvision.ops.deform_conv2d(x, offset, weight, padding=1)
    )
