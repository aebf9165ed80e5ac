"""Structured logs: one JSON object per line, with the trace and span ids of the current span."""

from __future__ import annotations

import logging

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider

from libs.telemetry import JsonFormatter

pytestmark = pytest.mark.unit


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "nextbest.test", "levelname": "INFO", "msg": message})
    record.__dict__.update(extra)
    return record


def test_log_line_carries_trace_and_span_ids_of_the_current_span():
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("decide") as span:
        line = JsonFormatter("decision").format(_record("decided %s", decision_id="d-1"))
        context = span.get_span_context()
    entry = orjson.loads(line)
    assert entry["service"] == "decision" and entry["level"] == "INFO" and entry["msg"] == "decided %s"
    assert entry["trace_id"] == format(context.trace_id, "032x")
    assert entry["span_id"] == format(context.span_id, "016x")
    assert entry["decision_id"] == "d-1"


def test_log_line_outside_a_span_has_no_trace_id_and_keeps_exceptions():
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record = _record("failed")
        record.exc_info = sys.exc_info()
    entry = orjson.loads(JsonFormatter("profile").format(record))
    assert "trace_id" not in entry
    assert "ValueError: bad" in entry["exc"]
