"""``python -m monitor`` is the ``advmon`` command."""

from monitor.cli import main

main(prog_name="advmon")
