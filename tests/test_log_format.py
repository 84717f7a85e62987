"""`--log-format json`: one JSON object per line, with the structured fields of a record."""

from __future__ import annotations

import json
import logging

from streaming_rag_cli._logging import JsonFormatter


def test_json_lines_carry_the_message_and_the_structured_fields() -> None:
    record = logging.LogRecord(
        "streaming_rag.jobs", logging.INFO, __file__, 1, "job %s %s", ("j1", "done"), None
    )
    record.job_id, record.status, record.duration_ms = "j1", "done", 12
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "job j1 done"
    assert (line["level"], line["logger"]) == ("INFO", "streaming_rag.jobs")
    assert (line["job_id"], line["status"], line["duration_ms"]) == ("j1", "done", 12)
    assert line["ts"].endswith("+00:00")
    assert "args" not in line and "msecs" not in line


def test_an_exception_is_one_field_of_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    text = JsonFormatter().format(record)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exc"]
