"""Studies that reproduce the paper's experiments with the library: each module runs one CLI subcommand."""
