"""Plots and the human-readable report, drawn from results JSON."""
