"""The Python examples of README.md and docs/*.md, run as written against a `streaming-rag dev`
stack.

Every fenced ```python block of those files carries a marker on the line right before its fence
(HTML comments: renderers show nothing), and a block with none fails
`test_every_python_block_is_marked`, so a new example cannot be skipped silently:

- `<!-- runnable -->`: the block is extracted and run with `sys.executable -c <block>` in a
  subprocess, from an empty folder, whose `REDIS_URL` names the stack's embedded Valkey, so the
  examples cannot drift from the code. `<!-- runnable env: NAME=value ... -->` also sets those
  variables (for an example that reads a secret of the reader's own from the environment).
- `<!-- not-runnable: REASON -->`: the block cannot run here (a signature, a fragment using the
  reader's own objects, FastAPI or an LLM server this suite does not have, a server that runs
  until stopped); the reason is required. It must still compile, unless REASON starts with
  `signature` (a call signature such as `f(x) -> T` need not be valid Python).

No example, runnable or not, hard-codes a Redis URL: against `dev`, they read `$REDIS_URL`.

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
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers_queue import wait_until

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
WAIT_S = 60.0
#: Deleting markers must fail: the README and docs/ have at least this many runnable blocks.
MIN_RUNNABLE_README = 3
MIN_RUNNABLE_DOCS = 5
RUNNABLE_MARK = re.compile(r"^<!--\s*runnable(?:\s+env:(?P<env>[^>]*?))?\s*-->$")
NOT_RUNNABLE_MARK = re.compile(r"^<!--\s*not-runnable:\s*(?P<reason>[^>]*?)\s*-->$")
ANY_MARK = re.compile(r"^<!--\s*(not-)?runnable\b")  # a marker, well-formed or not
PYTHON_INFO = {"python", "py", "python3", "pycon"}
URL_LITERAL = re.compile(r"[\"'](redis|rediss|unix|redis\+sentinel|rediss\+sentinel)://")


@dataclass(frozen=True)
class Block:
    doc: str  # README.md or docs/NAME.md
    index: int  # among the file's python blocks
    line: int  # of the fence, 1-based
    code: str
    runnable: bool
    reason: str | None = None  # why a not-runnable block is not run
    env: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def first_line(self) -> str:
        return next((s for s in self.code.splitlines() if s.strip()), "")

    @property
    def test_id(self) -> str:
        slug = re.sub(r"\W+", "_", self.first_line).strip("_")[:40]
        return f"{Path(self.doc).stem}-{self.index}-L{self.line}-{slug}"


def _is_python_fence(line: str) -> bool:
    """```python, ```py, ``` python title="x" ... (the info string's first word)."""
    stripped = line.strip()
    info = stripped[3:].split()
    return stripped.startswith("```") and bool(info) and info[0].lower() in PYTHON_INFO


def python_blocks(text: str, doc: str) -> tuple[list[Block], list[str]]:
    """Every python block of `text` with its marker, and the marking problems found: a block
    with no marker, a malformed marker, or a marker not right before a python fence."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                problems.append(f"{doc}:{i + 1}: unclosed {stripped} block")
                break
            if _is_python_fence(stripped):
                before = lines[i - 1].strip() if i else ""
                run, skip = RUNNABLE_MARK.match(before), NOT_RUNNABLE_MARK.match(before)
                code = "\n".join(lines[i + 1 : end]) + "\n"
                env = (
                    dict(item.split("=", 1) for item in shlex.split(run.group("env") or ""))
                    if run
                    else {}
                )
                reason = (skip.group("reason") or None) if skip else None
                if skip and not reason:
                    problems.append(f"{doc}:{i}: `not-runnable:` without a reason")
                elif run is None and not reason:
                    problems.append(
                        f"{doc}:{i + 1}: python block without `<!-- runnable -->` or "
                        "`<!-- not-runnable: REASON -->` right before its fence"
                    )
                blocks.append(Block(doc, len(blocks), i + 1, code, run is not None, reason, env))
            i = end + 1
            continue
        if ANY_MARK.match(stripped):
            following = lines[i + 1] if i + 1 < len(lines) else ""
            well_formed = RUNNABLE_MARK.match(stripped) or NOT_RUNNABLE_MARK.match(stripped)
            if not well_formed:
                problems.append(f"{doc}:{i + 1}: malformed marker {stripped!r}")
            elif not _is_python_fence(following):
                problems.append(f"{doc}:{i + 1}: {stripped!r} is not right before a python fence")
        i += 1
    return blocks, problems


def _parse_all() -> tuple[list[Block], list[str]]:
    blocks: list[Block] = []
    problems: list[str] = []
    for path in DOCS:
        found, wrong = python_blocks(
            path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix()
        )
        blocks += found
        problems += wrong
    return blocks, problems


BLOCKS, PROBLEMS = _parse_all()
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


def test_every_python_block_is_marked() -> None:
    assert not PROBLEMS, "\n".join(PROBLEMS)


def test_not_runnable_blocks_still_compile() -> None:
    for block in BLOCKS:
        if block.runnable or (block.reason or "").startswith("signature"):
            continue
        try:
            compile(block.code, block.where, "exec")
        except SyntaxError as exc:
            pytest.fail(f"{block.where} (not-runnable: {block.reason}) does not compile: {exc}")


def test_no_example_hard_codes_a_redis_url() -> None:
    """Against `dev`, examples read $REDIS_URL (runnable or not: the reader copies both)."""
    for block in BLOCKS:
        assert not URL_LITERAL.search(block.code), f"{block.where} hard-codes a Redis URL"


def test_the_readme_and_docs_mark_their_runnable_examples() -> None:
    readme = [b for b in RUNNABLE if b.doc == "README.md"]
    assert len(readme) >= MIN_RUNNABLE_README, [b.test_id for b in readme]
    docs = [b for b in RUNNABLE if b.doc != "README.md"]
    assert len(docs) >= MIN_RUNNABLE_DOCS, [b.test_id for b in docs]
    # the two examples a reader tries first: the library, and the client against `dev`
    assert any("StreamingRAG(" in b.code and "stream_events" in b.code for b in readme)
    assert any("StreamingRAGClient()" in b.code and ".submit(" in b.code for b in readme)


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.test_id for b in RUNNABLE])
def test_example_runs_as_written(block: Block, dev_redis_url: str, tmp_path: Path) -> None:
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
        pytest.fail(f"{block.where} still running after {WAIT_S:g} s:\n{exc.stdout!r}")
    assert done.returncode == 0, (
        f"{block.where} exited {done.returncode}:\n"
        f"--- stderr ---\n{done.stderr}\n--- stdout (last 2,000 chars) ---\n{done.stdout[-2000:]}"
    )


def test_the_marker_rules_catch_what_they_should() -> None:
    text = "\n".join(
        [
            "<!-- runnable env: A=1 B='two words' -->",
            "```python",
            "print(1)",
            "```",
            "```python",  # no marker
            "x",
            "```",
            "<!-- not-runnable:    -->",  # no reason
            "```python",
            "y",
            "```",
            "<!-- runnable -->",  # before a bash block
            "```bash",
            "<!-- runnable -->",  # inside a non-python block: not a marker
            "```",
            "<!-- runable -->",  # misspelt: not a marker at all, so the block below is unmarked
            "<!-- not-runnable -->",  # no colon: malformed
            "```py",
            "z",
            "```",
        ]
    )
    blocks, problems = python_blocks(text, "doc.md")
    assert [(b.line, b.runnable, b.reason) for b in blocks] == [
        (2, True, None),
        (5, False, None),
        (9, False, None),
        (18, False, None),
    ]
    assert blocks[0].env == {"A": "1", "B": "two words"} and blocks[0].code == "print(1)\n"
    assert problems == [
        "doc.md:5: python block without `<!-- runnable -->` or `<!-- not-runnable: REASON -->` "
        "right before its fence",
        "doc.md:8: `not-runnable:` without a reason",
        "doc.md:12: '<!-- runnable -->' is not right before a python fence",
        "doc.md:17: malformed marker '<!-- not-runnable -->'",
        "doc.md:18: python block without `<!-- runnable -->` or `<!-- not-runnable: REASON -->` "
        "right before its fence",
    ]
