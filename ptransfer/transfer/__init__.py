"""Prompt transfer: the prompt bank, the cross-task matrix, transfer as
initialization with its speedups, and the HF PEFT prompt format."""
