"""The prompt bank (prompts with their provenance, one entry per run) and HF PEFT's prompt-tuning format."""
