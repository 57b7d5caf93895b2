"""The running advmon system: settings and worker config, decoding, the streaming worker,
the incident history, the command line, ``advmon inspect`` and the serving client.

See ``docs/architecture.md`` for where each part lives.
"""

__version__ = "0.1.0"
