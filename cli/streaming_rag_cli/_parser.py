"""The `streaming-rag` argument parser: subcommands and checks across flags (argument types and
shared options: `_options`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from streaming_rag import __version__

from ._commands import (
    cmd_ask,
    cmd_cancel,
    cmd_replay,
    cmd_serve,
    cmd_status,
    cmd_watch,
    cmd_worker,
)
from ._demo import cmd_demo
from ._dev import cmd_dev
from ._options import (
    _add_common,
    _add_log_format,
    _json_object,
    _non_negative_float,
    _port,
    _positive_float,
    _positive_int,
    _speed,
)
from ._settings import (
    DEMO_APP,
    ENV_VARS,
    FOLDER_APP,
    LLM_APP,
)

__all__ = ["build_parser", "parse_args", "subcommands"]


def _add_worker(sub: Any) -> None:
    p = sub.add_parser(
        "worker",
        help="run a worker serving a StreamingRAG pipeline (SIGTERM: graceful stop)",
        description="Run an arq worker that answers queued questions with the pipeline "
        "returned by --app and publishes every event to the job's Redis Stream.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--app",
        metavar="MODULE:FACTORY",
        help=f"factory returning a StreamingRAG (default: $STREAMING_RAG_APP), e.g. {DEMO_APP}",
    )
    source.add_argument(
        "--docs",
        metavar="DIR",
        help=f"serve a folder of .md/.txt files ({FOLDER_APP}; with --llm-model, {LLM_APP})",
    )
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help="jobs run at once, arq max_jobs (default: $STREAMING_RAG_CONCURRENCY, else 100)",
    )
    p.add_argument(
        "--retention-s",
        type=_positive_float,
        metavar="S",
        help="seconds a finished job's trace is kept (default: $STREAMING_RAG_RETENTION_S, "
        "else 3600)",
    )
    p.add_argument(
        "--flush-ms",
        type=float,
        metavar="MS",
        help="coalescing window of the event publisher: fewer Redis calls per token for up to "
        "MS of added latency (default: $STREAMING_RAG_FLUSH_MS, else 0: off)",
    )
    p.add_argument(
        "--abandon-after-s",
        type=_positive_float,
        metavar="S",
        help="cancel a running job nobody has watched for S seconds, with ERROR 'Abandoned: "
        "nobody watching' (default: $STREAMING_RAG_ABANDON_AFTER_S, else never)",
    )
    p.add_argument(
        "--grace-s",
        type=_non_negative_float,
        metavar="S",
        help="on SIGTERM, seconds running jobs may finish before they end with an ERROR "
        "(default 10)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (needs the metrics extra; "
        "default: $STREAMING_RAG_METRICS_PORT, else no metrics)",
    )
    p.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="address the metrics listen on (default 127.0.0.1: this machine only)",
    )
    llm = p.add_argument_group(
        "answers from an OpenAI-compatible LLM",
        f"--llm-model serves {LLM_APP} over --docs (else $STREAMING_RAG_DOCS); the other "
        "--llm-* flags need it",
    )
    llm.add_argument(
        "--llm-model",
        metavar="NAME",
        help="the model to ask (sets $STREAMING_RAG_LLM_MODEL)",
    )
    llm.add_argument(
        "--llm-base-url",
        metavar="URL",
        help="the API's base URL, e.g. http://localhost:11434/v1 "
        "(default: $STREAMING_RAG_LLM_BASE_URL)",
    )
    llm.add_argument(
        "--llm-api-key",
        metavar="KEY",
        help="the API key (default: $STREAMING_RAG_LLM_API_KEY, which, unlike a flag, "
        "other users cannot see in `ps`)",
    )
    llm.add_argument(
        "--llm-max-tokens",
        type=_positive_int,
        metavar="N",
        help="stop each answer after N tokens (sets $STREAMING_RAG_LLM_MAX_TOKENS; default: "
        "the server's limit)",
    )
    _add_common(p)
    _add_log_format(p)
    p.set_defaults(func=cmd_worker, check=_check_worker)


def _check_worker(args: argparse.Namespace) -> str | None:
    """The usage error in a `worker` command line that argparse cannot see, if any."""
    if args.llm_model is None:
        flags = ("--llm-base-url", "--llm-api-key", "--llm-max-tokens")
        given = [flag for flag in flags if _given(args, flag)]
        if given:
            verb = "needs" if len(given) == 1 else "need"
            return f"{' and '.join(given)} {verb} --llm-model NAME, which selects {LLM_APP}"
    elif args.app:
        return f"--llm-model serves {LLM_APP}: it cannot be combined with --app"
    elif not args.llm_model.strip():
        return "--llm-model needs a model name"
    return None


def _given(args: argparse.Namespace, flag: str) -> bool:
    return getattr(args, flag.removeprefix("--").replace("-", "_")) is not None


def _add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the web page and HTTP API that stream answers (needs the web extra)",
        description="Run the web app streaming_rag_client.web:create_app under uvicorn: submit "
        'questions and follow answers over HTTP. Needs the web extra: `pip install -e ".[web]"` '
        "from a clone. Set STREAMING_RAG_SECRET to require the signed per-job links POST "
        "/answers returns for watching and cancelling (without it anyone who reaches the server "
        "may; a warning says so when --host is not a loopback address). "
        "SIGTERM or Ctrl-C: graceful stop; open event streams end at once, asking browsers to "
        "reconnect elsewhere.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=_port, default=8000, metavar="PORT", help="port to listen on (default 8000)"
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve the bridge's Prometheus metrics on http://METRICS_HOST:PORT/metrics, a port "
        "apart from --port (needs the metrics extra; default: no metrics)",
    )
    p.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="address the metrics listen on (default 127.0.0.1: this machine only)",
    )
    _add_common(p)
    _add_log_format(p)
    p.set_defaults(func=cmd_serve)


def _add_client_commands(sub: Any) -> None:
    p = sub.add_parser(
        "ask",
        help="ask a question; print the answer as it streams",
        description="Submit a question to the workers and print the answer to stdout as it "
        "streams; retrieval and timing go to stderr.",
    )
    p.add_argument("question", help="the question")
    p.add_argument(
        "--context-json",
        type=_json_object,
        metavar="JSON",
        help="a JSON object passed to the backend's generate(query, context)",
    )
    p.add_argument(
        "--start-timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="give up when no worker picks the job up within S seconds (default 30)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser(
        "watch",
        help="join a job, running or finished, and print its answer",
        description="Follow any job's stream from the start (or after --after) to its end.",
    )
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument(
        "--after", metavar="ENTRY_ID", help="resume after this stream entry id (event.id)"
    )
    _add_common(p)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser(
        "replay",
        help="re-emit a finished job's trace with its original pacing",
        description="Replay a job's trace with its original pacing divided by --speed.",
    )
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        metavar="X",
        help="pacing factor: 1 original, 2 twice as fast, 0 instant; 0.01 to 1000 (default 1)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "status",
        help="print a job's status word",
        description="Print queued, running, done, failed, cancelled or 'not found' (exit 1).",
    )
    p.add_argument("job_id", metavar="JOB_ID")
    _add_common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "cancel",
        help="cancel a queued or running job",
        description="Cancel a job; it ends with ERROR {stage: generation, msg: Cancelled}.",
    )
    p.add_argument("job_id", metavar="JOB_ID")
    _add_common(p)
    p.set_defaults(func=cmd_cancel)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole system in one process: embedded Valkey, worker, 2 subscribers, replay",
        description="Start an embedded Valkey (unless a server is configured), run a worker "
        "in-process over the bundled corpus, ask a question, show two subscribers receiving "
        "the same live stream, then replay it. Works offline.",
    )
    p.add_argument("question", nargs="?", help="the question (default: a sample question)")
    p.add_argument(
        "--embedded",
        action="store_true",
        help="use an embedded Valkey even when $REDIS_URL is set",
    )
    p.add_argument(
        "--replay-speed",
        type=_speed,
        default=2.0,
        metavar="X",
        help="pacing factor of the replay, 0 instant (default 2)",
    )
    _add_common(
        p, url_help="use this server instead of an embedded Valkey (default: $REDIS_URL if set)"
    )
    p.set_defaults(func=cmd_demo)


def _add_dev(sub: Any) -> None:
    p = sub.add_parser(
        "dev",
        help="a local stack in the foreground: embedded Valkey, workers, web page; Ctrl-C stops",
        description="Start an embedded Valkey (unless --redis-url or $REDIS_URL names a server), "
        "N `streaming-rag worker` processes serving --app (default "
        f"{DEMO_APP}) or --docs, and `streaming-rag serve` on 127.0.0.1 (when the web extra is "
        "installed); then print the page URL, the Redis URL and copy-paste lines to ask a "
        "question. Ctrl-C or SIGTERM stops every process it started.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--app",
        metavar="MODULE:FACTORY",
        help=f"factory returning a StreamingRAG, found in the current folder (default {DEMO_APP})",
    )
    source.add_argument(
        "--docs", metavar="DIR", help=f"serve a folder of .md/.txt files ({FOLDER_APP})"
    )
    p.add_argument(
        "--port",
        type=_port,
        default=8000,
        metavar="PORT",
        help="port of the web page and HTTP API on 127.0.0.1 (default 8000; 0: a free one)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes to run (default 1)",
    )
    p.add_argument(
        "--reload",
        action="store_true",
        help="restart the workers when the app's module or a .py file of the current folder "
        "changes (checked every second)",
    )
    _add_common(
        p, url_help="use this server instead of an embedded Valkey (default: $REDIS_URL if set)"
    )
    p.set_defaults(func=cmd_dev)


def build_parser() -> argparse.ArgumentParser:
    """The `streaming-rag` argument parser; each subcommand stores its handler in `func`."""
    parser = argparse.ArgumentParser(
        prog="streaming-rag",
        description="Stream RAG answers token by token, in process or through a job queue.",
        epilog="environment:\n"
        + "\n".join(f"  {name:<26} {text}" for name, text in ENV_VARS.items())
        + "\n\nstart here: streaming-rag demo, then streaming-rag dev",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_worker(sub)
    _add_serve(sub)
    _add_client_commands(sub)
    _add_demo(sub)
    _add_dev(sub)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of `parser` (from `build_parser()`), by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser.parse_args(argv)`, then the subcommand's checks across flags: a usage error
    exits 2 with the subcommand's usage, like any argparse error."""
    args = parser.parse_args(argv)
    check = getattr(args, "check", None)
    problem = check(args) if check is not None else None
    if problem:
        subcommands(parser)[args.command].error(problem)
    return args
