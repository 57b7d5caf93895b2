"""The running advmon system: settings, CLI, stream processing."""

__version__ = "0.1.0"
