"""The README's Python examples, run as written against a `streaming-rag dev` stack.

A fenced ```python block preceded by the line `<!-- runnable -->` (an HTML comment: renderers
show nothing) is extracted and run with `sys.executable -c <block>` in a subprocess whose
`REDIS_URL` names the stack's embedded Valkey, so the examples cannot drift from the code.
`<!-- runnable env: NAME=value ... -->` also sets those variables (for an example that reads a
secret of the reader's own from the environment). Unmarked blocks need something this suite
does not have (FastAPI, an LLM server, the reader's own objects).

One `python -m streaming_rag_cli dev` serves the whole module (its demo app answers every
question), started in its own session with `REDIS_URL` unset; it is stopped with SIGINT at the
end and must exit 0 (tests/test_dev.py checks that nothing of it remains); if it does not stop,
its whole process group is killed.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers_queue import wait_until

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
WAIT_S = 60.0
#: Deleting markers must fail: the README has at least this many runnable blocks.
MIN_RUNNABLE = 3
MARKER = re.compile(r"^<!--\s*runnable(?:\s+env:(?P<env>[^>]*?))?\s*-->$")
FENCE = "```python"


@dataclass(frozen=True)
class Block:
    index: int  # among the README's ```python blocks
    line: int  # of the fence, 1-based
    code: str
    env: dict[str, str]
    runnable: bool

    @property
    def first_line(self) -> str:
        return next((s for s in self.code.splitlines() if s.strip()), "")

    @property
    def test_id(self) -> str:
        return f"{self.index}-L{self.line}-" + re.sub(r"\W+", "_", self.first_line).strip("_")[:40]


def python_blocks(text: str) -> list[Block]:
    """Every ```python block of `text`, with whether the line before it is a runnable marker.
    A marker before anything but a ```python fence is an error (it would mark nothing)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        marker = MARKER.match(stripped)
        if marker is not None and (i + 1 >= len(lines) or lines[i + 1].strip() != FENCE):
            raise AssertionError(f"README.md:{i + 1}: {stripped!r} is not right before {FENCE}")
        if stripped == FENCE:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            assert end is not None, f"README.md:{i + 1}: unclosed {FENCE} block"
            before = MARKER.match(lines[i - 1].strip()) if i else None
            env_text = (before.group("env") or "") if before else ""
            env = dict(item.split("=", 1) for item in shlex.split(env_text))
            code = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(Block(len(blocks), i + 1, code, env, before is not None))
            i = end
        i += 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [b for b in BLOCKS if b.runnable]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def dev_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start `streaming-rag dev` for the module; yield the Redis URL its block prints."""
    pytest.importorskip("uvicorn")
    log = tmp_path_factory.mktemp("readme") / "dev.log"
    drop = ("REDIS_URL", "PYTHONPATH", "STREAMING_RAG_PREFIX", "STREAMING_RAG_SECRET")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streaming_rag_cli", "dev", "--port", str(_free_port())],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def text() -> str:
            return log.read_text(errors="replace")

        try:
            wait_until(
                lambda: "Copy-paste:" in text() or proc.poll() is not None,
                "the `streaming-rag dev` block",
                WAIT_S,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{text()}") from None
        match = re.search(r"export REDIS_URL=(\S+)", text())
        assert proc.poll() is None and match, f"streaming-rag dev did not start:\n{text()}"
        yield match.group(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT_S) == 0, text()
    finally:
        if proc.poll() is None:  # a failed start or stop leaves nothing behind either
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(WAIT_S)


def test_the_readme_marks_its_runnable_examples() -> None:
    assert len(RUNNABLE) >= MIN_RUNNABLE, [b.test_id for b in RUNNABLE]
    # the two examples a reader tries first: the library, and the client against `dev`
    assert any("StreamingRAG(" in b.code and "stream_events" in b.code for b in RUNNABLE)
    assert any("StreamingRAGClient()" in b.code and ".submit(" in b.code for b in RUNNABLE)
    for block in RUNNABLE:  # against `dev`, examples read $REDIS_URL: no URL literal
        assert not re.search(r"[\"'](redis|rediss|unix)://", block.code), (
            f"README.md:{block.line} hard-codes a Redis URL"
        )


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.test_id for b in RUNNABLE])
def test_readme_example_runs_as_written(block: Block, dev_redis_url: str, tmp_path: Path) -> None:
    """Run from an empty folder, as a reader's script would; exit 0 in time."""
    env = {k: v for k, v in os.environ.items() if k not in ("STREAMING_RAG_PREFIX",)}
    env.update(block.env, REDIS_URL=dev_redis_url)
    try:
        done = subprocess.run(
            [sys.executable, "-c", block.code],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"README.md:{block.line} still running after {WAIT_S:g} s:\n{exc.stdout}")
    assert done.returncode == 0, (
        f"README.md:{block.line} exited {done.returncode}:\n"
        f"--- stderr ---\n{done.stderr}\n--- stdout (last 2,000 chars) ---\n{done.stdout[-2000:]}"
    )
