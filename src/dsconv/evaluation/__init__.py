"""Evaluation: classification metrics, model complexity (params, MACs), plots."""
