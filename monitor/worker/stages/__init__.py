"""The worker's stages, one module each, in the order an event travels.

==============  =========================================  ======================================
module          reads                                      writes
==============  =========================================  ======================================
``scoring``     inference topics (through the intake,      decisions, detections, dead letters;
                :mod:`monitor.worker.intake`), the         source flags, signals, OIP v2
                internal joined topic                      halves, query fingerprints
``join``        OIP v2 halves (keyed by CloudEvent id)     native events on the joined topic
``quarantine``  source flags (keyed by source)             source decisions, quarantine detections
``queries``     query fingerprints (keyed by model and     source decisions, query-attack
                source)                                    detections
``drift``       signals (keyed by model)                   drift detections
``incidents``   detections                                 incidents in the database
``alerts``      the incident store                         alerts in Alertmanager
==============  =========================================  ======================================

A stage is a plain class (a :class:`mode.Service` when it has start-up work) built by
:func:`monitor.worker.app.create_app` from what it needs (the worker config, its state as
a Faust table or a dict in tests, the metrics, a
:data:`~monitor.worker.records.Publish` callable, the incident store) and fed by an
agent of :mod:`monitor.worker.agents` (or, for the inference topics, the intake)
through one coroutine per input. A stage that
writes records builds them with :class:`~monitor.worker.records.OutputRecord` and
returns only once ``publish`` has returned, i.e. once the broker acknowledged them; the
offsets it was fed from are committed after that. A stage never touches Faust's streams.
"""
