"""Subcommands of the `lmscope` CLI, one module per area; `lmscope.cli` registers them."""
