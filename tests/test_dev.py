"""`streaming-rag dev`: the whole local stack as real subprocesses, stopped by one SIGINT.

Each test runs `python -m streaming_rag_cli dev` in its own session (so its process group id
is its pid and every child it starts shares it), with `REDIS_URL` unset (an embedded Valkey),
its output in a file. Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from streaming_rag_client import StreamingRAGClient

pytest.importorskip("uvicorn")

WAIT_S = 60
ROOT = Path(__file__).resolve().parent.parent
APP_V1 = """
from streaming_rag import StreamingRAG


class EchoRAG:
    def retrieve(self, query):
        return [{"content": "dev folder", "metadata": {"source": "mymod"}}]

    def generate(self, query, context):
        return "VERSION: " + query


def build():
    return StreamingRAG(EchoRAG())
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(what: str, check: Callable[[], object], log: Path) -> object:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {what} within {WAIT_S} s:\n{log.read_text()}")
        time.sleep(0.05)  # polling interval of a condition with a deadline


def _group(pgid: int) -> list[int]:
    """Pids of live (not zombie) processes in process group `pgid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(stat.parent.name))
    return found


class Dev:
    """A running `streaming-rag dev` and its log."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def block(self) -> str:
        return str(_wait_for("printed block", lambda: "Copy-paste:" in self.text(), self.log))

    def value(self, pattern: str) -> str:
        match = re.search(pattern, self.text())
        assert match, f"{pattern!r} not in:\n{self.text()}"
        return match.group(1)


@pytest.fixture
def run_dev(tmp_path: Path) -> Iterator[Callable[..., Dev]]:
    started: list[Dev] = []
    handles: list[IO[bytes]] = []

    def start(*args: str, cwd: Path = ROOT) -> Dev:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PYTHONPATH")}
        env.pop("STREAMING_RAG_SECRET", None)
        log = tmp_path / f"dev{len(started)}.log"
        handle = log.open("wb")
        handles.append(handle)
        proc = subprocess.Popen(
            [sys.executable, "-m", "streaming_rag_cli", "dev", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        dev = Dev(proc, log)
        started.append(dev)
        return dev

    yield start
    for dev in started:  # a failed test leaves nothing behind either
        if dev.proc.poll() is None:
            os.killpg(dev.proc.pid, signal.SIGKILL)
            dev.proc.wait(WAIT_S)
    for handle in handles:
        handle.close()


def _stop_and_check(dev: Dev) -> None:
    """SIGINT the dev process: it exits 0 in time and no process of its group remains."""
    dev.proc.send_signal(signal.SIGINT)
    assert dev.proc.wait(WAIT_S) == 0, dev.text()
    assert "[streaming-rag dev stopped]" in dev.text()
    assert _group(dev.proc.pid) == [], dev.text()


def test_dev_serves_the_page_and_answers_then_stops_everything(
    run_dev: Callable[..., Dev],
) -> None:
    port = _free_port()
    dev = run_dev("--port", str(port))
    dev.block()
    page = f"http://127.0.0.1:{port}/"
    assert f"page:      {page}" in dev.text()
    redis_url = dev.value(r"export REDIS_URL=(\S+)")
    assert redis_url.startswith("redis://127.0.0.1:")
    assert f"curl -s -X POST {page}answers" in dev.text()
    assert len(_group(dev.proc.pid)) >= 4  # dev, Valkey, a worker, the bridge

    with httpx.Client(base_url=page, timeout=WAIT_S) as http:
        assert http.get("/").status_code == 200
        submitted = http.post("/answers", json={"query": "What is BM25?"})
        assert submitted.status_code == 202, submitted.text
        kinds = []
        with http.stream("GET", submitted.json()["events_url"]) as events:
            for line in events.iter_lines():
                if line.startswith("event:"):
                    kinds.append(line.partition(":")[2].strip())
                    if kinds[-1] in ("generation_done", "error"):
                        break
    assert kinds[-1] == "generation_done", kinds
    assert "chunk" in kinds
    _stop_and_check(dev)


def test_dev_reload_restarts_workers_with_the_new_code(
    run_dev: Callable[..., Dev], tmp_path: Path
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    module = folder / "mymod.py"
    module.write_text(APP_V1.replace("VERSION", "v1"))
    dev = run_dev("--app", "mymod:build", "--reload", "--port", str(_free_port()), cwd=folder)
    dev.block()
    redis_url = dev.value(r"export REDIS_URL=(\S+)")
    old_pid = int(dev.value(r"\(pids (\d+)\)"))
    with StreamingRAGClient(redis_url, start_timeout=WAIT_S) as client:
        assert client.query("hello")["answer"] == "v1: hello"

        module.write_text(APP_V1.replace("VERSION", "v2"))
        _wait_for("reload", lambda: "[reloaded" in dev.text(), dev.log)
        new_pid = int(dev.value(r"workers now pids (\d+)"))
        assert new_pid != old_pid
        assert old_pid not in _group(dev.proc.pid)
        assert client.query("hello")["answer"] == "v2: hello"
    _stop_and_check(dev)
