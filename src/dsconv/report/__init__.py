"""Aggregate run directories (single runs and sweeps) into one comparison report."""
