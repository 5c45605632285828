"""Cross-model mappers: the prompt projector (module, files, objectives and training) and prompt recycling."""
