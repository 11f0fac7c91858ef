"""Subcommands of the `sslab` CLI, one module per area."""
