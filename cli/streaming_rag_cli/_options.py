"""The `streaming-rag` parser's building blocks: argument types (numbers with bounds, replay
speeds, ports, JSON objects) and the options every subcommand shares (`--redis-url`,
`--events-url`, `--prefix`, `-v`, `--log-format`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ._logging import FORMATS
from ._settings import DEFAULT_PREFIX, DEFAULT_REDIS_URL, EVENTS_URL_FORMS, URL_FORMS

__all__ = [
    "_add_common",
    "_add_log_format",
    "_json_object",
    "_non_negative_float",
    "_port",
    "_positive_float",
    "_positive_int",
    "_speed",
]


# -- argument types ------------------------------------------------------------------------------
def _number(kind: Callable[[str], Any], minimum: float, inclusive: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid number: {text!r}") from None
        if value < minimum or (not inclusive and value == minimum):
            sign = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(f"must be {sign} {minimum}, got {text}")
        return value

    return parse


def _speed(text: str) -> float:
    """A replay pacing factor: 0 (instant) or a finite number from 0.01 to 1000."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid number: {text!r}") from None
    if value != 0 and not 0.01 <= value <= 1000:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"must be 0 (instant) or from 0.01 to 1000 (times the original pace), got {text}"
        )
    return value


_positive_float = _number(float, 0, inclusive=False)
_non_negative_float = _number(float, 0, inclusive=True)
_positive_int = _number(int, 1, inclusive=True)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {text}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, e.g. \'{"user": "ada"}\'')
    return value


# -- parser --------------------------------------------------------------------------------------
def _add_common(parser: argparse.ArgumentParser, *, url_help: str | None = None) -> None:
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help=url_help
        or f"Redis/Valkey server URL: {URL_FORMS} (default: $REDIS_URL, else {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--events-url",
        metavar="URL",
        help="where the per-job keys (event streams, job hashes, leases) live when not on the "
        f"--redis-url server (the queue): {EVENTS_URL_FORMS} (default: "
        "$STREAMING_RAG_EVENTS_URL, else the --redis-url server)",
    )
    parser.add_argument(
        "--prefix",
        help=f"key prefix naming the deployment (default: $STREAMING_RAG_PREFIX, else "
        f"{DEFAULT_PREFIX!r})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")


def _add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        help="log lines as text or one JSON object each (default: $STREAMING_RAG_LOG_FORMAT, "
        "else text)",
    )
