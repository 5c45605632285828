"""Experiments built from training, scoring and the bank: the cross-task matrix, transfer as initialization with its speedups, cross-model runs, the indicator pipeline, and the demo."""
