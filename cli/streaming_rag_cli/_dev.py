"""`streaming-rag dev`: a whole local stack in the foreground, stopped by one Ctrl-C.

Starts an embedded Valkey (unless `--redis-url` / `$REDIS_URL` names a server), N
`streaming-rag worker` subprocesses serving the user's app, and a `streaming-rag serve`
subprocess (the HTTP bridge and its page, on 127.0.0.1), then prints one block: the page URL,
the Redis URL to export, and three copy-paste snippets (export, curl, Python).

Contracts:

- Every child is started by this process and stays in its process group. SIGINT or SIGTERM
  stops them all: SIGTERM to each, a bounded wait (`STOP_TIMEOUT_S`), then SIGKILL; the
  embedded Valkey is stopped last. The command then exits 0.
- A child that exits on its own is reported in one line; the command then stops everything
  and exits 1, except that with `--reload` a worker that exited (e.g. a syntax error in the
  app) is started again at the next change of a watched file.
- `--reload` polls, once a second, the mtimes of the app module's file and of the `.py` files
  in the current folder; on a change it stops the workers (as above) and starts new ones,
  printing one `[reloaded ...]` line with the new pids.
- Without the web extra, one line says so and the stack runs without the bridge.
- The Redis URL is passed to children in the environment (never on a command line, where
  `ps` shows it) and printed with its password masked.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from streaming_rag.exceptions import CLIError

from ._settings import DEFAULT_PREFIX, DEMO_APP, FOLDER_APP, setup_logging

__all__ = ["STOP_TIMEOUT_S", "cmd_dev", "watched_files"]

#: Seconds a child may take to exit after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT_S = 10.0
#: Seconds the bridge may take to answer `GET /` after it was started.
BRIDGE_START_S = 30.0
#: Seconds between two looks at the children and (with --reload) the watched files.
TICK_S = 1.0
HOST = "127.0.0.1"
WEB_EXTRA_HINT = 'pip install -e ".[web]"'

logger = logging.getLogger("streaming_rag.cli")


# -- pieces --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _web_extra_missing() -> str | None:
    """Why the bridge cannot run here (one line), or None when it can."""
    for module in ("uvicorn", "streaming_rag_client.web"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"{exc}"
    return None


def _module_file(module: str) -> Path | None:
    """The source file of `module` (dotted), looked up in the current folder first, without
    importing it; None when it cannot be found."""
    base = Path.cwd().joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def watched_files(app: str | None) -> list[Path]:
    """What `--reload` watches: the file of `app`'s module (``module:factory``), if found,
    and the ``.py`` files of the current folder (not its subfolders)."""
    files = set(Path.cwd().glob("*.py"))
    if app:
        found = _module_file(app.partition(":")[0])
        if found is not None:
            files.add(found)
    return sorted(files)


def _snapshot(files: list[Path]) -> dict[Path, tuple[int, int]]:
    seen = {}
    for path in files:
        with contextlib.suppress(OSError):
            st = path.stat()
            seen[path] = (st.st_mtime_ns, st.st_size)
    return seen


def _stop(procs: list[subprocess.Popen[bytes]], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every process of `procs` still running, wait for them all up to `timeout_s`,
    then SIGKILL the rest and reap them."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_page(url: str, bridge: subprocess.Popen[bytes], stop: threading.Event) -> None:
    """Poll `url` until it answers 200; `CLIError` when the bridge exits or does not answer
    within `BRIDGE_START_S`. Returns early when `stop` is set."""
    deadline = time.monotonic() + BRIDGE_START_S
    while not stop.is_set():
        if bridge.poll() is not None:
            raise CLIError(f"the HTTP bridge exited with code {bridge.returncode} (see above)")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise CLIError(f"the HTTP bridge did not answer at {url} within {BRIDGE_START_S:g} s")
        stop.wait(0.1)


# -- the stack -----------------------------------------------------------------------------------
class _Stack:
    """The children of one `streaming-rag dev` run."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.workers: list[subprocess.Popen[bytes]] = []
        self.bridge: subprocess.Popen[bytes] | None = None

    def _cli(self, *argv: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "streaming_rag_cli", *argv]
        return subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL)

    def start_workers(self) -> None:
        source = ["--docs", self.args.docs] if self.args.docs else ["--app", self.app]
        extra = ["-v"] if self.args.verbose else []
        self.workers = [
            self._cli("worker", *source, "--grace-s", "1", *extra) for _ in range(self.args.workers)
        ]

    def stop_workers(self) -> None:
        _stop(self.workers)
        self.workers = []

    def start_bridge(self, port: int) -> None:
        self.bridge = self._cli("serve", "--host", HOST, "--port", str(port))

    @property
    def app(self) -> str:
        return FOLDER_APP if self.args.docs else (self.args.app or DEMO_APP)

    def stop(self) -> None:
        _stop([*self.workers, *([self.bridge] if self.bridge is not None else [])])
        self.workers = []


def _block(
    page: str | None, url: str, prefix: str, stack: _Stack, question: str, secret: bool
) -> str:
    from streaming_rag.wire import redact_url

    shown = redact_url(url)
    pids = ", ".join(str(w.pid) for w in stack.workers)
    lines = ["", "streaming-rag dev is running (Ctrl-C stops everything)"]
    lines.append(f"  page:      {page}" if page else "  page:      (none: no web extra)")
    lines.append(f"  Redis:     {shown}")
    lines.append(f"  workers:   {len(stack.workers)} serving {stack.app} (pids {pids})")
    if stack.bridge is not None:
        lines.append(f"  bridge:    pid {stack.bridge.pid}")
    if stack.args.reload:
        lines.append("  reload:    on (app module and ./*.py, checked every second)")
    lines += ["", "Copy-paste:", f"  export REDIS_URL={shlex.quote(shown)}"]
    if prefix != DEFAULT_PREFIX:
        lines.append(f"  export STREAMING_RAG_PREFIX={shlex.quote(prefix)}")
    if page:
        body = shlex.quote('{"query": "' + question.replace('"', '\\"') + '"}')
        lines.append(
            f"  curl -s -X POST {page}answers -H 'content-type: application/json' -d {body}"
        )
    lines += [
        "",
        "  from streaming_rag_client import StreamingRAGClient",
        "  with StreamingRAGClient() as client:  # reads $REDIS_URL and $STREAMING_RAG_PREFIX",
        f"      print(client.query({question!r})['answer'])",
        "",
    ]
    if secret:
        lines.insert(-1, "  (STREAMING_RAG_SECRET is set: follow the links POST /answers returns)")
    return "\n".join(lines)


# -- the command ---------------------------------------------------------------------------------
def cmd_dev(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    from streaming_rag.wire import redact_url
    from streaming_rag_worker.demo_app import SAMPLE_QUESTION

    from ._settings import SECRET_ENV, prefix

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server: Any = None
    stack: _Stack | None = None
    try:
        url = args.redis_url or os.environ.get("REDIS_URL")
        if not url:
            from .embedded import EmbeddedValkey

            server = EmbeddedValkey().start()
            url = server.url
            print(f"[embedded Valkey started at {url}, pid {server.pid}]", flush=True)
        else:
            print(f"[using the server at {redact_url(url)}]", flush=True)
        chosen_prefix = prefix(args)
        env = {**os.environ, "REDIS_URL": url, "STREAMING_RAG_PREFIX": chosen_prefix}
        stack = _Stack(args, env)
        watched = watched_files(stack.app) if args.reload else []
        seen = _snapshot(watched)
        stack.start_workers()
        missing = _web_extra_missing()
        page = None
        if missing:
            print(
                f"[no HTTP bridge: the web extra is missing ({missing}): {WEB_EXTRA_HINT}]",
                flush=True,
            )
        else:
            port = args.port or _free_port()
            stack.start_bridge(port)
            assert stack.bridge is not None
            page = f"http://{HOST}:{port}/"
            _wait_for_page(page, stack.bridge, stop)
        if stop.is_set():
            return 0
        question = SAMPLE_QUESTION if not args.docs else "What is in these documents?"
        secret = bool(os.environ.get(SECRET_ENV))
        print(_block(page, url, chosen_prefix, stack, question, secret), flush=True)
        return _supervise(stack, stop, watched, seen)
    finally:
        if stack is not None:
            stack.stop()
        if server is not None:
            server.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        print("[streaming-rag dev stopped]", flush=True)


def _supervise(
    stack: _Stack,
    stop: threading.Event,
    watched: list[Path],
    seen: dict[Path, tuple[int, int]],
) -> int:
    """Watch the children (and the files, with --reload) every `TICK_S` until `stop` is set:
    0 then; 1 when a child exited on its own (but a worker under --reload)."""
    reload = stack.args.reload
    while not stop.wait(TICK_S):
        if stack.bridge is not None and stack.bridge.poll() is not None:
            print(f"[the HTTP bridge exited with code {stack.bridge.returncode}; stopping]")
            return 1
        dead = [w for w in stack.workers if w.poll() is not None]
        if dead and not reload:
            print(f"[worker pid {dead[0].pid} exited with code {dead[0].returncode}; stopping]")
            return 1
        if dead:
            for w in dead:
                print(f"[worker pid {w.pid} exited with code {w.returncode}; waiting for a change]")
            stack.workers = [w for w in stack.workers if w not in dead]
        if not reload:
            continue
        watched = watched_files(stack.app)  # new files in the folder count too
        now = _snapshot(watched)
        if now == seen:
            continue
        changed = sorted(
            {p.name for p in set(now) ^ set(seen)}
            | {p.name for p in now if p in seen and now[p] != seen[p]}
        )
        seen = now
        stack.stop_workers()
        stack.start_workers()
        pids = ", ".join(str(w.pid) for w in stack.workers)
        print(f"[reloaded ({', '.join(changed)} changed): workers now pids {pids}]", flush=True)
    return 0
