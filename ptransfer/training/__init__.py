"""Trainer, optimizer, partitioning, checkpointing and metric writers."""
