"""End-to-end tests of ``advmon worker`` subprocesses on a real Kafka-protocol broker."""
