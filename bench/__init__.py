"""smartbench: a benchmark suite for training-time pruning.

``bench.prune(model, ...)`` prunes a model inside your own training loop (bench/api.py); the
plugin API for new pruners is ``bench.pruner``; everything else is reached through the CLI.
"""


def __getattr__(name: str):
    if name in ("prune", "Pruning"):
        from bench import api  # loaded on first use: `import bench.core...` stays light

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
