"""Subcommands that compose the engine from its packages (imported only by eicu.cli)."""
