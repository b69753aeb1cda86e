"""Conformance kit: the checks every registered pruner must pass (see docs/adding-a-pruner.md)."""
