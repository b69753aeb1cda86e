"""The ``smartbench`` command line (``bench.cli:main``); sub-commands live in this package."""

from bench.cli.main import main

__all__ = ["main"]
