"""Structured logs (one JSON object per line, with the current span's ids, no SQL parameters) and telemetry that is
off costing nothing."""

from __future__ import annotations

import logging

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from libs.metrics import meter, metrics_active
from libs.settings import CommonSettings
from libs.telemetry import QUIET_LOGGERS, JsonFormatter, setup_logging, tracer, tracing_active

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


def test_without_tracing_services_get_a_tracer_whose_spans_record_nothing():
    assert not tracing_active() and not metrics_active()  # no provider installed in the test process
    with tracer("nextbest.test").start_as_current_span("stage", attributes={"n": 1}) as span:
        span.set_attributes({"nextbest.channel": "web"})
        assert not span.is_recording() and not trace.get_current_span().get_span_context().is_valid
    meter("nextbest.test").create_counter("nextbest.test.count").add(1, {"channel": "web"})  # a no-op, no error


def test_sql_drivers_stay_quiet_at_debug_so_statement_parameters_never_reach_the_logs(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level, {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    try:
        setup_logging("identity", CommonSettings(log_level="DEBUG"))
        logging.getLogger("aiosqlite").debug("executing %s", "INSERT ... ('ann@example.com',)")
        logging.getLogger("sqlalchemy.engine.Engine").info("[cached] ('ann@example.com',)")
        logging.getLogger("nextbest.identity").debug("resolved %s", "c-1")
    finally:
        root.handlers[:], level, quiet = saved
        root.setLevel(level)
        for name, quiet_level in quiet.items():
            logging.getLogger(name).setLevel(quiet_level)
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["logger"], e["level"]) for e in lines] == [("nextbest.identity", "DEBUG")]
