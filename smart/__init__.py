"""SMART pruner: separate learnable scores, exact-k differentiable top-k, dynamic temperature."""

from smart.topk import soft_topk

__all__ = ["soft_topk"]
