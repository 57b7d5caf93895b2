"""The ``advmon`` command line."""

from monitor.cli.root import console, main

__all__ = ["console", "main"]
