"""The subcommand handlers but `demo`: worker, serve, ask, watch, replay, status, cancel.

Each takes the parsed arguments and returns the exit code. `worker`, `client` and the web
server are imported inside the handlers, so importing the CLI needs no Redis.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from streaming_rag import StreamEvent
from streaming_rag.exceptions import CLIError

from ._printing import EventPrinter
from ._settings import (
    EVENTS_URL_ENV,
    FOLDER_APP,
    LLM_APP,
    LLM_ENV,
    SECRET_ENV,
    events_url,
    prefix,
    redis_url,
    setup_logging,
)

__all__ = [
    "WEB_APP",
    "cmd_ask",
    "cmd_cancel",
    "cmd_replay",
    "cmd_serve",
    "cmd_status",
    "cmd_watch",
    "cmd_worker",
    "serve_env",
    "worker_app",
]

#: The ASGI app factory `streaming-rag serve` runs (it reads REDIS_URL, STREAMING_RAG_PREFIX,
#: STREAMING_RAG_SECRET).
WEB_APP = "streaming_rag_client.web:create_app"
WEB_EXTRA_HINT = 'pip install -e ".[web]" from a clone of streaming-rag'


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _client(args: argparse.Namespace, **kwargs: Any) -> Any:
    from streaming_rag_client import StreamingRAGClient

    return StreamingRAGClient(
        redis_url(args), prefix=prefix(args), events_url=events_url(args), **kwargs
    )


# -- worker --------------------------------------------------------------------------------------
def worker_app(args: argparse.Namespace) -> tuple[str | None, dict[str, str]]:
    """The app path `streaming-rag worker` serves, and the environment to set before loading it.

    `--llm-model` selects `LLM_APP`, configured through its env variables (`--docs` included);
    else `--docs` selects `FOLDER_APP`; else `--app` (None: `$STREAMING_RAG_APP` decides).
    """
    if args.llm_model:
        env = {
            var: str(getattr(args, dest)) for dest, var in LLM_ENV.items() if getattr(args, dest)
        }
        if args.docs:
            env["STREAMING_RAG_DOCS"] = args.docs
        return LLM_APP, env
    if args.docs:
        return FOLDER_APP, {}
    return args.app, {}


def cmd_worker(args: argparse.Namespace) -> int:
    # SIGTERM while still starting up: exit quietly (arq installs its graceful handler later)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    import redis

    from streaming_rag.wire import redact_url
    from streaming_rag_worker import WorkerConfig, build_worker
    from streaming_rag_worker.app import load_app

    setup_logging(args.verbose, logging.INFO, args.log_format)
    app, env = worker_app(args)
    os.environ.update(env)
    rag = None
    if app == FOLDER_APP and args.docs:
        from streaming_rag_worker.demo_app import folder_app

        rag = folder_app(args.docs)
    config = WorkerConfig.from_env(
        redis_url=args.redis_url,
        events_url=args.events_url,
        prefix=args.prefix,
        app=app,
        concurrency=args.concurrency,
        retention_s=args.retention_s,
        abandon_after_s=args.abandon_after_s,
        flush_ms=args.flush_ms,
        shutdown_grace_s=args.grace_s,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )
    if rag is None:
        rag = load_app(config.app)  # fail here, in one line, rather than inside arq's startup
    worker = build_worker(config, rag=rag)
    try:
        worker.run()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise CLIError(f"cannot reach Redis at {redact_url(config.redis_url)}: {exc}") from None
    except redis.exceptions.RedisError as exc:  # e.g. a database number the server lacks
        raise CLIError(
            f"Redis at {redact_url(config.redis_url)} refused the worker: {exc}"
            + (
                " (pick a database below the server's `databases` setting)"
                if "DB" in str(exc)
                else ""
            )
        ) from None
    return 0


# -- serve ---------------------------------------------------------------------------------------
def serve_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment `streaming-rag serve` sets for `streaming_rag_client.web.create_app()`
    to read."""
    env = {}
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    if args.events_url:
        env[EVENTS_URL_ENV] = args.events_url
    if args.prefix:
        env["STREAMING_RAG_PREFIX"] = args.prefix
    return env


def cmd_serve(args: argparse.Namespace) -> int:
    # SIGTERM before uvicorn's handlers are in, or re-raised by uvicorn after its graceful
    # shutdown: exit 0
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        importlib.import_module("uvicorn")
        importlib.import_module(WEB_APP.partition(":")[0])  # fail here, in one line
    except ImportError as exc:
        raise CLIError(f"cannot load the web server ({exc}): {WEB_EXTRA_HINT}") from None
    if args.metrics_port is not None:
        try:
            importlib.import_module("prometheus_client")
        except ImportError:
            from streaming_rag_client.metrics import INSTALL_HINT

            raise CLIError(INSTALL_HINT) from None
    from ._serve import run

    setup_logging(args.verbose, logging.WARNING, args.log_format)
    os.environ.update(serve_env(args))
    run(
        args.host,
        args.port,
        log_level="debug" if args.verbose else "info",
        secret_set=bool(os.environ.get(SECRET_ENV)),
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host or "127.0.0.1",
    )
    return 0


# -- client commands -----------------------------------------------------------------------------
#: Seconds `ask` waits for the first event before it says it is waiting for a worker.
WAITING_NOTE_S = 2.0


def _noting_a_wait(events: Iterator[StreamEvent], note: str) -> Iterator[StreamEvent]:
    """`events`, with `note` printed to stderr if the first one takes `WAITING_NOTE_S`."""
    timer = threading.Timer(WAITING_NOTE_S, lambda: print(note, file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        for event in events:
            timer.cancel()
            yield event
    finally:
        timer.cancel()


def cmd_ask(args: argparse.Namespace) -> int:
    with _client(args, start_timeout=args.start_timeout) as client:
        job_id = client.submit(args.question, args.context_json)
        print(f"[job {job_id}]", file=sys.stderr, flush=True)
        note = (
            f"[waiting for a worker to take job {job_id} (up to {args.start_timeout:g} s): is "
            f"one running on the same Redis and prefix {client.prefix!r}?]"
        )
        try:
            return EventPrinter(job_id).follow(_noting_a_wait(client.events(job_id), note))
        except KeyboardInterrupt:
            print(
                f"\n[interrupted; the job goes on: `streaming-rag watch {job_id}` rejoins it, "
                f"`streaming-rag cancel {job_id}` stops it]",
                file=sys.stderr,
            )
            return 130


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        printer = EventPrinter(args.job_id)
        code = printer.follow(client.events(args.job_id, after=args.after))
        if printer.shown == 0:  # the job had ended at or before --after
            status = client.status(args.job_id)
            print(
                f"[no events after {args.after}: job {args.job_id} is {status}]",
                file=sys.stderr,
                flush=True,
            )
            return 0 if status == "done" else 1
        return code


def cmd_replay(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return EventPrinter(args.job_id).follow(client.replay(args.job_id, speed=args.speed))


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.status(args.job_id)
    print(str(status))
    return 1 if status == "not found" else 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        cancelled = client.cancel(args.job_id)
    print("cancelled" if cancelled else "already finished")
    return 0
