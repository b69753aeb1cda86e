"""Temperature schedules for SMART's soft top-k (tau is lowered during the pruning stage).

They live in ``bench.core.schedules`` with the other schedules (equations there):
``ExponentialTau`` / ``exponential_tau`` and ``AdaptiveTau`` (our reconstruction of the paper's
"dynamic temperature"; the paper's exact rule was not retrievable).
"""

from bench.core.schedules import AdaptiveTau, ExponentialTau, exponential_tau

__all__ = ["AdaptiveTau", "ExponentialTau", "exponential_tau"]
