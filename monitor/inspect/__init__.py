"""``advmon inspect``: how the messages on a topic decode, before the worker reads them.

A user points advmon at a topic serving already writes and asks: in this format, with
this mapping, do the messages make events, and do their inputs fit the detector? This
package answers with a report per Kafka record, built by pure functions over the record's
value, headers, key and coordinates (:func:`inspect_record`, :func:`inspect_records`),
so everything but :func:`read_records` is testable without a broker.

Each record is decoded and each event's input checked through :mod:`monitor.decoding`,
the functions the worker uses, so a refusal has the worker's reason and words: against
the detector of its model when a worker config is given, else only that the input
decodes to finite numbers. OIP v2 requests and responses found among the records read
are joined by CloudEvent id, as the worker's join stage would.

One module per job:

``_options``
    what to decode with: :func:`resolve_decoding` from the command line and a worker
    config, giving a :class:`Decoding`;
``_reports``
    what each record decodes to: :class:`MessageReport`;
``_topic``
    reading a topic: :func:`read_records`;
``_show``
    showing reports: :func:`report_tables`, :func:`summary_line`, :func:`export_events`.

Errors are :class:`~monitor.errors.InspectError` (something the user must fix: config,
mapping, topic, broker) and its subclass :class:`~monitor.errors.InspectUsageError`
(options that contradict each other or are missing).
"""

from __future__ import annotations

from monitor.inspect._options import (
    DEFAULT_MODEL_ID,
    Decoding,
    ExpectedInput,
    parse_mapping,
    resolve_decoding,
)
from monitor.inspect._reports import (
    EventSummary,
    InputSummary,
    KafkaRecord,
    MessageReport,
    OipHalfSummary,
    Problem,
    TensorSummary,
    inspect_record,
    inspect_records,
)
from monitor.inspect._show import export_events, report_tables, summary_line
from monitor.inspect._topic import TopicRead, read_records

__all__ = [
    "DEFAULT_MODEL_ID",
    "Decoding",
    "EventSummary",
    "ExpectedInput",
    "InputSummary",
    "KafkaRecord",
    "MessageReport",
    "OipHalfSummary",
    "Problem",
    "TensorSummary",
    "TopicRead",
    "export_events",
    "inspect_record",
    "inspect_records",
    "parse_mapping",
    "read_records",
    "report_tables",
    "resolve_decoding",
    "summary_line",
]
