"""The `ptransfer` command: argument parsing, gin setup and every subcommand."""
