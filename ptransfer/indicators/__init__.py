"""Transferability indicators: prompt-embedding similarities (E/C), the overlap
of activated FFN neurons (ON), and their Spearman correlation with measured
transfer."""
