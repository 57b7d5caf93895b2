"""Talking to Kafka outside the worker: cluster metadata and a local broker process."""
