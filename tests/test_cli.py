"""The `streaming-rag` command line: parser, output format, exit codes, and real runs.

Real runs use the suite's server (`redis_url`) with a per-test `key_prefix`; the worker runs as
a separate `streaming-rag worker` process where the test says so. Subprocess timeouts only
guard against hangs; nothing here is synchronised by sleeping.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streaming_rag import EventType, StreamEvent
from streaming_rag_cli import ENV_VARS, EventPrinter, build_parser, main, subcommands
from streaming_rag_cli._commands import serve_env, worker_app

ROOT = Path(__file__).resolve().parent.parent
SUBCOMMANDS = ("worker", "serve", "ask", "watch", "replay", "status", "cancel", "demo", "dev")
HANG_GUARD_S = 90
DEMO_APP = "streaming_rag_worker.demo_app:demo_app"
LLM_APP = "streaming_rag_worker.llm_app:openai_app"
LLM_FLAGS = ["--llm-model", "m1", "--llm-base-url", "http://h:1/v1", "--llm-api-key", "k1"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m streaming_rag ARGS` to completion, text output captured."""
    return subprocess.run(
        [sys.executable, "-m", "streaming_rag_cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


# -- parser and help -----------------------------------------------------------------------------
def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", out, re.MULTILINE), f"{name} missing from help"
    for var in ENV_VARS:
        assert var in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: streaming-rag {name}" in out
    for flag in ("--redis-url", "--prefix", "--verbose"):
        assert flag in out


def test_parser_knows_exactly_the_subcommands() -> None:
    assert set(subcommands(build_parser())) == set(SUBCOMMANDS)


def test_python_dash_m_prints_help_and_imports_no_redis() -> None:
    proc = cli()
    assert proc.returncode == 0, explain(proc)
    assert "usage: streaming-rag" in proc.stdout
    code = (
        "import sys, streaming_rag_cli; "
        "loaded = sorted(m for m in ('redis', 'arq', 'streaming_rag_worker', "
        "'streaming_rag_client') "
        "if m in sys.modules); print(loaded)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv",
    [
        ["ask", "q", "--context-json", "[1]"],
        ["ask", "q", "--context-json", "{not json"],
        ["ask", "q", "--start-timeout", "0"],
        ["replay", "j", "--speed", "-1"],
        ["worker", "--concurrency", "0"],
        ["worker", "--app", "m:f", "--docs", "d"],
        ["worker", "--llm-base-url", "http://h/v1"],
        ["worker", "--llm-api-key", "k", "--docs", "d"],
        ["worker", "--llm-model", "m", "--app", "m:f"],
        ["serve", "--port", "70000"],
        ["status"],
        ["nope"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


# -- output format -------------------------------------------------------------------------------
def _events(*specs: tuple[EventType, Any, float]) -> list[StreamEvent]:
    return [StreamEvent(t, d, lat, id=f"1-{i}") for i, (t, d, lat) in enumerate(specs)]


def test_printer_streams_chunks_and_reports_on_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    docs = [{"content": "x", "metadata": {"source": "a.md"}}, {"content": "y"}]
    events = _events(
        (EventType.RETRIEVAL_START, {"query": "q"}, 0.0),
        (EventType.RETRIEVAL_DONE, {"num_docs": 2, "docs": docs}, 0.0123),
        (EventType.GENERATION_START, {"prompt_chars": 10}, 0.013),
        (EventType.CHUNK, "Hello ", 0.02),
        (EventType.CHUNK, "world.", 0.05),
        (EventType.GENERATION_DONE, {"total_latency": 0.06}, 0.06),
    )
    assert EventPrinter("JOB", out=out, err=err).follow(events) == 0
    assert out.getvalue() == "Hello world.\n"
    assert err.getvalue().splitlines() == [
        "[retrieved 2 docs in 0.012 s: a.md]",
        "[done in 0.060 s, first chunk at 0.020 s, job JOB]",
    ]


def test_printer_reports_an_error_and_exit_1() -> None:
    out, err = io.StringIO(), io.StringIO()
    events = _events(
        (EventType.RETRIEVAL_START, {"query": "q"}, 0.0),
        (EventType.RETRIEVAL_DONE, {"num_docs": 0, "docs": []}, 0.001),
        (EventType.GENERATION_START, {"prompt_chars": 10}, 0.002),
        (EventType.CHUNK, "Partial", 0.003),
        (EventType.ERROR, {"stage": "generation", "msg": "Cancelled"}, 0.004),
    )
    assert EventPrinter("JOB", out=out, err=err).follow(events) == 1
    assert out.getvalue() == "Partial\n"
    assert err.getvalue().splitlines()[-1] == "[error at generation: Cancelled]"


def test_printer_without_a_terminal_event_exits_1() -> None:
    out, err = io.StringIO(), io.StringIO()
    events = _events((EventType.RETRIEVAL_START, {"query": "q"}, 0.0))
    assert EventPrinter("JOB", out=out, err=err).follow(events) == 1


# -- worker flags --------------------------------------------------------------------------------
class _FakeWorker:
    def run(self) -> None:
        pass


@pytest.fixture
def captured_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Replace `streaming_rag_worker.build_worker`; record what `streaming-rag worker` would
    run."""
    import streaming_rag_worker as worker

    seen: dict[str, Any] = {}

    def fake_build_worker(config: Any, *, rag: Any = None, **overrides: Any) -> _FakeWorker:
        seen.update(config=config, rag=rag, overrides=overrides)
        return _FakeWorker()

    monkeypatch.setattr(worker, "build_worker", fake_build_worker)
    for var in ENV_VARS:  # set first so that what the CLI sets is undone after the test
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, old_term)


def test_worker_flags_reach_the_worker_config(captured_worker: dict[str, Any]) -> None:
    argv = [
        "worker",
        "--app",
        "streaming_rag_worker.demo_app:demo_app",
        "--redis-url",
        "redis://h:1/2",
    ]
    argv += ["--prefix", "p1", "--concurrency", "7", "--retention-s", "60", "--grace-s", "2.5"]
    assert main(argv) == 0
    config = captured_worker["config"]
    assert (config.redis_url, config.prefix, config.app) == ("redis://h:1/2", "p1", argv[2])
    assert (config.concurrency, config.retention_s, config.shutdown_grace_s) == (7, 60.0, 2.5)
    assert captured_worker["rag"] is not None  # the app is loaded before the worker starts


def test_worker_reads_the_environment(
    captured_worker: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://envhost:6380/1")
    monkeypatch.setenv("STREAMING_RAG_APP", "streaming_rag_worker.demo_app:demo_app")
    monkeypatch.setenv("STREAMING_RAG_PREFIX", "envprefix")
    monkeypatch.setenv("STREAMING_RAG_CONCURRENCY", "3")
    monkeypatch.setenv("STREAMING_RAG_RETENTION_S", "99")
    assert main(["worker"]) == 0
    config = captured_worker["config"]
    assert (config.redis_url, config.prefix, config.app) == (
        "redis://envhost:6380/1",
        "envprefix",
        "streaming_rag_worker.demo_app:demo_app",
    )
    assert (config.concurrency, config.retention_s) == (3, 99.0)


def test_worker_docs_shortcut_serves_a_folder(
    captured_worker: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "n.md").write_text("Okapi is the name of the system that introduced BM25.")
    assert main(["worker", "--docs", str(tmp_path)]) == 0
    rag = captured_worker["rag"]
    assert "Okapi" in rag.query("What is Okapi?")["answer"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["worker"], "no app given"),
        (["worker", "--app", "no_such_module_xyz:f"], "cannot import"),
        (["worker", "--docs", "/no/such/folder"], "cannot serve documents"),
        (
            ["worker", "--app", "streaming_rag_worker.demo_app:demo_app", "--prefix", "bad prefix"],
            "prefix",
        ),
    ],
)
def test_worker_setting_errors_exit_2(
    captured_worker: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("streaming-rag worker: error:")
    assert "Traceback" not in err
    assert "config" not in captured_worker


# -- worker --llm-* ------------------------------------------------------------------------------
def test_llm_flags_parse() -> None:
    args = build_parser().parse_args(["worker", *LLM_FLAGS, "--docs", "notes"])
    assert (args.llm_model, args.llm_base_url, args.llm_api_key) == ("m1", "http://h:1/v1", "k1")
    assert args.docs == "notes"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--llm-base-url", "http://h/v1"], "--llm-base-url needs --llm-model NAME"),
        (["--llm-base-url", "u", "--llm-api-key", "k"], "--llm-base-url and --llm-api-key need"),
        (["--app", DEMO_APP, "--llm-model", "m"], f"--llm-model serves {LLM_APP}: it cannot"),
        (["--llm-model", " "], "--llm-model needs a model name"),
    ],
)
def test_llm_flag_misuse_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["worker", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: streaming-rag worker")
    assert f"streaming-rag worker: error: {message}" in err


def test_llm_model_selects_the_llm_app() -> None:
    parse = build_parser().parse_args
    assert worker_app(parse(["worker", *LLM_FLAGS, "--docs", "notes"])) == (
        LLM_APP,
        {
            "STREAMING_RAG_LLM_MODEL": "m1",
            "STREAMING_RAG_LLM_BASE_URL": "http://h:1/v1",
            "STREAMING_RAG_LLM_API_KEY": "k1",
            "STREAMING_RAG_DOCS": "notes",
        },
    )
    assert worker_app(parse(["worker", "--llm-model", "m2"])) == (
        LLM_APP,
        {"STREAMING_RAG_LLM_MODEL": "m2"},
    )
    assert worker_app(parse(["worker", "--docs", "notes"])) == (
        "streaming_rag_worker.demo_app:folder_app",
        {},
    )
    assert worker_app(parse(["worker", "--app", DEMO_APP])) == (DEMO_APP, {})
    assert worker_app(parse(["worker"])) == (None, {})
    for var in worker_app(parse(["worker", *LLM_FLAGS, "--docs", "d"]))[1]:
        assert var in ENV_VARS


def test_worker_with_llm_model_loads_the_llm_app_after_setting_its_env(
    captured_worker: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LLM app itself is not run: `load_app` is replaced by one that records the app path
    and the environment it would read, and returns the demo pipeline."""
    import streaming_rag_worker.app as worker_app_module

    demo = worker_app_module.load_app(DEMO_APP)
    loaded: dict[str, Any] = {}

    def fake_load_app(path: str | None) -> Any:
        names = ("MODEL", "BASE_URL", "API_KEY")
        env = {name: os.environ.get(f"STREAMING_RAG_LLM_{name}") for name in names}
        loaded.update(path=path, env=env, docs=os.environ.get("STREAMING_RAG_DOCS"))
        return demo

    monkeypatch.setattr(worker_app_module, "load_app", fake_load_app)
    assert main(["worker", "--llm-model", "m1", "--llm-base-url", "http://h:1/v1"]) == 0
    assert loaded == {
        "path": LLM_APP,
        "env": {"MODEL": "m1", "BASE_URL": "http://h:1/v1", "API_KEY": None},
        "docs": None,
    }
    assert captured_worker["config"].app == LLM_APP
    assert captured_worker["rag"] is demo


# -- serve ---------------------------------------------------------------------------------------
def test_serve_help_lists_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--redis-url", "--prefix", "--verbose", "-v"):
        assert flag in out
    assert 'pip install -e ".[web]"' in " ".join(out.split())  # argparse wraps the text


def test_serve_defaults_and_the_env_it_sets_for_the_web_app() -> None:
    parse = build_parser().parse_args
    args = parse(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    assert serve_env(args) == {}
    args = parse(["serve", "--host", "0.0.0.0", "--port", "0", "--redis-url", "redis://h:1/2"])
    assert (args.host, args.port) == ("0.0.0.0", 0)
    assert serve_env(args) == {"REDIS_URL": "redis://h:1/2"}
    assert serve_env(parse(["serve", "--prefix", "p1"])) == {"STREAMING_RAG_PREFIX": "p1"}


def test_serve_without_the_web_extra_exits_2_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` raises ImportError
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["serve"]) == 2
    finally:
        signal.signal(signal.SIGTERM, old_term)
    err = capsys.readouterr().err
    assert err.startswith("streaming-rag serve: error:")
    assert 'pip install -e ".[web]"' in err
    assert len(err.strip().splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_when_ready(url: str, server: subprocess.Popen[bytes], log: Path) -> int:
    """GET `url` until the server answers (connection refused: not listening yet); its status."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(response.status)
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError):
                raise
        if server.poll() is not None:
            pytest.fail(f"serve exited with {server.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"serve did not answer within {HANG_GUARD_S} s:\n{log.read_text()}")
        time.sleep(0.05)  # pace the retries; readiness is the answer itself


def test_serve_answers_http_and_stops_on_sigterm(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    port = _free_port()
    argv = ["serve", "--port", str(port), "--redis-url", redis_url, "--prefix", key_prefix]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "streaming_rag_cli", *argv],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        assert _get_when_ready(f"http://127.0.0.1:{port}/", server, log_path) == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=HANG_GUARD_S) == 0, log_path.read_text()
        assert "Traceback" not in log_path.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


# -- real server ---------------------------------------------------------------------------------
def test_status_and_watch_of_an_unknown_job(
    redis_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--redis-url", redis_url, "--prefix", key_prefix]
    assert main(["status", "no-such-job", *common]) == 1
    assert capsys.readouterr().out == "not found\n"
    assert main(["watch", "no-such-job", *common]) == 2
    err = capsys.readouterr().err
    assert "no-such-job" in err
    assert "not found" in err
    assert main(["replay", "bad id!", *common]) == 2
    assert "job_id" in capsys.readouterr().err


def test_ask_with_an_unreachable_server_names_the_url() -> None:
    url = "redis://127.0.0.1:1/0"
    proc = cli("ask", "What is BM25?", "--redis-url", url)
    assert proc.returncode == 2, explain(proc)
    assert url in proc.stderr
    assert "Traceback" not in proc.stderr
    # a first contact that fails is reported at once, not after the client's reconnect_s
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_ask_refuses_invalid_input_before_queueing(redis_url: str, key_prefix: str) -> None:
    proc = cli("ask", "", "--redis-url", redis_url, "--prefix", key_prefix)
    assert proc.returncode == 2, explain(proc)
    assert "non-empty" in proc.stderr


def test_demo_runs_offline_with_an_embedded_server() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = cli("demo", env=env)
    assert proc.returncode == 0, explain(proc)
    out = proc.stdout
    assert "embedded Valkey started at redis://127.0.0.1:" in out
    assert "Subscribers A and B received identical event lists" in out
    assert "[replayed answer is the same]" in out
    assert "[embedded Valkey stopped]" in out
    answer_sentence = (
        "a subscriber that joins late can read the stream from the beginning, and a subscriber "
        "that disconnects can resume after the last id it saw."
    )
    assert out.count(answer_sentence) == 2  # live, then replayed
    assert "Traceback" not in proc.stderr


def test_demo_with_a_given_question_and_server(redis_url: str) -> None:
    proc = cli("demo", "What is BM25?", "--redis-url", redis_url, "--replay-speed", "0")
    assert proc.returncode == 0, explain(proc)
    assert "embedded Valkey" not in proc.stdout
    assert proc.stdout.count("BM25 (Best Matching 25) is a ranking function") == 2
    assert "identical event lists" in proc.stdout


def test_ask_status_replay_watch_against_a_worker_process(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    common = ["--redis-url", redis_url, "--prefix", key_prefix]
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streaming_rag_cli", "worker", "--app", DEMO_APP, *common],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # no waiting for the worker: the job waits in the queue until the worker takes it
        asked = cli("ask", "What is BM25?", *common)
        assert asked.returncode == 0, explain(asked) + "\n--- worker\n" + log_path.read_text()
        assert asked.stdout.startswith("BM25 (Best Matching 25) is a ranking function")
        assert "Sources: bm25.md" in asked.stdout
        match = re.search(r"^\[done in [\d.]+ s, .*job ([0-9a-f]{32})\]$", asked.stderr, re.M)
        assert match, explain(asked)
        job_id = match.group(1)
        assert f"[job {job_id}]" in asked.stderr
        assert re.search(r"^\[retrieved \d+ docs in [\d.]+ s: bm25\.md", asked.stderr, re.M)

        status = cli("status", job_id, *common)
        assert (status.returncode, status.stdout) == (0, "done\n"), explain(status)

        replayed = cli("replay", job_id, "--speed", "0", *common)
        assert replayed.returncode == 0, explain(replayed)
        assert replayed.stdout == asked.stdout

        watched = cli("watch", job_id, *common)
        assert watched.returncode == 0, explain(watched)
        assert watched.stdout == asked.stdout

        cancelled = cli("cancel", job_id, *common)
        assert (cancelled.returncode, cancelled.stdout) == (0, "already finished\n")

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=HANG_GUARD_S) == 0, log_path.read_text()
        log_text = log_path.read_text()
        assert "ready: prefix" in log_text
        assert "Traceback" not in log_text
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_cancel_of_a_queued_job_ends_it(redis_url: str, key_prefix: str) -> None:
    from streaming_rag_client import StreamingRAGClient

    common = ["--redis-url", redis_url, "--prefix", key_prefix]
    with StreamingRAGClient(redis_url, prefix=key_prefix) as client:
        job_id = client.submit("What is BM25?")  # no worker: it stays queued
        proc = cli("cancel", job_id, *common)
        assert (proc.returncode, proc.stdout) == (0, "cancelled\n"), explain(proc)
        assert client.status(job_id) == "cancelled"
    watched = cli("watch", job_id, *common)
    assert watched.returncode == 1
    assert "[error at generation: Cancelled]" in watched.stderr
