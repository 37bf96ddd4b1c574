"""Subcommands of the ``taylorprune`` CLI, one module each."""
