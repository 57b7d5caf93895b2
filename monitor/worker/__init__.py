"""The streaming worker (``advmon worker``): a Faust app that reads inference topics and
publishes decisions, detections and dead letters.

- :mod:`~monitor.worker.run` starts it: checks the config, detectors, database and
  broker, then runs Faust;
- :mod:`~monitor.worker.app` builds the app: broker connection, topics, tables, stages;
- :mod:`~monitor.worker.agents` moves messages from topics to stages, top to bottom in
  the order an event travels;
- :mod:`~monitor.worker.stages` holds one module per stage;
- :mod:`~monitor.worker.records`, :mod:`~monitor.worker.decisions` and
  :mod:`~monitor.worker.signals` are what stages write; :mod:`~monitor.worker.metrics`
  what they count, served by :mod:`~monitor.worker.web`; :mod:`~monitor.worker.consumer`
  the Kafka consumer that never commits over an unprocessed message.
"""
