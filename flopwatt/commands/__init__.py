"""CLI subcommands, one module per group; shared rendering helpers in :mod:`.output`."""
