"""Subcommands of python -m lowbit, one module each."""
