"""Readers for HF safetensors, T5X checkpoints and GGUF files; prompt files."""
