"""What every layer above may use: errors, file I/O (and the one atomic writer), mesh and sharding, multi-process setup, vocabularies, offline assets, 95% intervals of evaluation scores."""
