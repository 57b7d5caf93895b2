"""Fault injection: kill, cut off and restart what a worker depends on, and count what is lost.

Each scenario runs real processes on loopback (Apache Kafka, ``advmon worker``,
PostgreSQL, Alertmanager), injects one kind of fault, checks the invariant the issue
asks for and records its figures (:mod:`tests.faults.figures`);
``python -m tests.faults.report`` renders them into ``docs/reliability.md``.
"""
