"""Arguments shared by several commands."""

from __future__ import annotations

import argparse


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--amp`` and ``--compile``, the same for every command that trains."""
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present) | cpu | cuda | cuda:N; not part of the run id (rows record it)",
    )
    parser.add_argument(
        "--amp", action="store_true", help="bf16 autocast of training (off by default; part of the run id)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model in the native loop's training steps (inductor; evaluation stays eager; "
        "numerics differ from eager, so it is part of the run id; detection/segmentation: refused)",
    )
