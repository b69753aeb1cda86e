"""Temperature schedules for SMART's soft top-k (tau is lowered during the pruning stage).

* ``exponential``: tau(p) = tau0 * (tau_min / tau0) ** p over the annealing part p in [0, 1].
* ``adaptive``: multiplicative decay per step, faster while the soft mask is far from binary:
  tau <- max(tau_min, tau * r ** (1 + gain * d)), where r = (tau_min/tau0) ** (1/steps) is the
  exponential rate and d = mean(4 f (1 - f)) in [0, 1] measures how far the mask f is from {0, 1}.
  It therefore reaches tau_min no later than the exponential schedule. (Our reconstruction of
  the paper's "dynamic temperature"; the paper's exact rule was not retrievable.)
"""

from __future__ import annotations

import math


def exponential_tau(tau0: float, tau_min: float, fraction: float) -> float:
    fraction = min(max(fraction, 0.0), 1.0)
    return tau0 * (tau_min / tau0) ** fraction


class AdaptiveTau:
    def __init__(self, tau0: float, tau_min: float, gain: float):
        self.tau0, self.tau_min, self.gain = tau0, tau_min, gain
        self.tau = tau0

    def step(self, steps: int, nonbinary: float) -> float:
        rate = math.log(self.tau_min / self.tau0) / max(1, steps)  # log of r, negative
        self.tau = max(self.tau_min, self.tau * math.exp(rate * (1.0 + self.gain * nonbinary)))
        return self.tau
