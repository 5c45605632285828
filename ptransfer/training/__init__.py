"""Trainer, evaluation, optimizer, checkpointing (orbax) and metric writers."""
