"""`OpenAICompatibleLLM` over real HTTP: the real openai SDK against `FakeOpenAIServer`."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from helpers_core import WAIT_S
from openai_server import FakeOpenAIServer

from streaming_rag import AsyncStreamableLLM, EventType, StreamingRAG, SyncStreamableLLM
from streaming_rag.exceptions import ConfigError, LLMError, StreamingRAGError
from streaming_rag.llms import OpenAICompatibleLLM
from streaming_rag.llms.openai import PLACEHOLDER_API_KEY
from streaming_rag_worker import WorkerConfigError
from streaming_rag_worker.llm_app import API_KEY_ENV, BASE_URL_ENV, DOCS_ENV, MODEL_ENV, openai_app

TOKENS = ["The ", "sky ", "is ", "blue", "."]
DOC = "The sky is blue because air scatters blue light more than red light."


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(TOKENS) as srv:
        yield srv


def make_llm(server: FakeOpenAIServer, **params: Any) -> OpenAICompatibleLLM:
    return OpenAICompatibleLLM(
        "test-model", base_url=server.base_url, api_key="sk-test", max_retries=0, **params
    )


async def collect(llm: OpenAICompatibleLLM, prompt: str) -> list[str]:
    return [token async for token in llm.astream(prompt)]


class Backend:
    def retrieve(self, query: str) -> list[dict[str, object]]:
        return [{"content": DOC, "metadata": {"source": "sky.md"}}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- streaming -------------------------------------------------------------------------------------
def test_sync_stream_yields_deltas_and_sends_model_prompt_and_params(
    server: FakeOpenAIServer,
) -> None:
    llm = make_llm(server, temperature=0.25, max_tokens=64)
    assert list(llm.stream("Why is the sky blue?")) == TOKENS
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["model"] == "test-model"
    assert request.body["stream"] is True
    assert request.body["messages"] == [{"role": "user", "content": "Why is the sky blue?"}]
    assert request.body["temperature"] == 0.25
    assert request.body["max_tokens"] == 64


async def test_async_stream_yields_deltas_and_sends_params(server: FakeOpenAIServer) -> None:
    llm = make_llm(
        server,
        system_prompt="Be brief.",
        top_p=0.5,
        seed=7,
        stop=["\n\n"],
        stream_options={"include_usage": True},  # adds a usage chunk without choices
    )
    assert await collect(llm, "q?") == TOKENS
    body = server.requests[0].body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q?"},
    ]
    assert (body["top_p"], body["seed"], body["stop"]) == (0.5, 7, ["\n\n"])
    assert body["stream_options"] == {"include_usage": True}
    assert await asyncio.to_thread(server.finished.wait, WAIT_S)


async def test_async_client_is_reused_within_a_loop(server: FakeOpenAIServer) -> None:
    llm = make_llm(server)
    assert await collect(llm, "one") == TOKENS
    client = llm._async()
    assert await collect(llm, "two") == TOKENS
    assert llm._async() is client
    assert [r.prompt for r in server.requests] == ["one", "two"]
    await llm.aclose()
    assert llm._async() is not client


def test_sync_tokens_arrive_while_the_server_is_still_streaming(
    server: FakeOpenAIServer,
) -> None:
    server.pause_after = 2  # the server holds the rest until the test releases it
    stream = make_llm(server).stream("q")
    assert [next(stream), next(stream)] == TOKENS[:2]
    assert not server.finished.is_set()
    server.release.set()
    assert list(stream) == TOKENS[2:]
    assert server.finished.wait(WAIT_S)  # the server thread may still be finishing its reply


async def test_async_tokens_arrive_while_the_server_is_still_streaming(
    server: FakeOpenAIServer,
) -> None:
    server.pause_after = 2
    stream = make_llm(server).astream("q")
    assert [await anext(stream), await anext(stream)] == TOKENS[:2]
    assert not server.finished.is_set()
    server.release.set()
    assert [token async for token in stream] == TOKENS[2:]
    assert await asyncio.to_thread(server.finished.wait, WAIT_S)


# -- early close -----------------------------------------------------------------------------------
def test_sync_early_close_closes_the_http_response(server: FakeOpenAIServer) -> None:
    server.pause_after = 2
    stream = make_llm(server).stream("q")
    assert next(stream) == TOKENS[0]
    stream.close()
    assert server.disconnected.wait(WAIT_S), "the server never saw the client disconnect"
    assert not server.finished.is_set()


async def test_async_early_close_closes_the_http_response(server: FakeOpenAIServer) -> None:
    server.pause_after = 2
    stream = make_llm(server).astream("q")
    assert await anext(stream) == TOKENS[0]
    await stream.aclose()
    assert await asyncio.to_thread(server.disconnected.wait, WAIT_S)
    assert not server.finished.is_set()


# -- failures --------------------------------------------------------------------------------------
def test_sync_http_500_is_an_llm_error_naming_server_and_status(
    server: FakeOpenAIServer,
) -> None:
    server.fail_status = 500
    with pytest.raises(LLMError) as info:
        list(make_llm(server).stream("q"))
    message = str(info.value)
    assert server.base_url in message
    assert "HTTP 500 Internal Server Error" in message
    assert "the model crashed" in message
    assert info.value.status_code == 500
    assert isinstance(info.value.__cause__, openai.InternalServerError)
    assert isinstance(info.value, StreamingRAGError)


async def test_async_http_404_is_an_llm_error_naming_server_and_status(
    server: FakeOpenAIServer,
) -> None:
    server.fail_status = 404
    server.fail_message = "model 'test-model' not found"
    with pytest.raises(LLMError) as info:
        await collect(make_llm(server), "q")
    message = str(info.value)
    assert server.base_url in message
    assert "'test-model'" in message
    assert "HTTP 404 Not Found: model 'test-model' not found" in message
    assert info.value.status_code == 404


def test_sync_mid_stream_disconnect_is_an_llm_error_after_the_partial_answer(
    server: FakeOpenAIServer,
) -> None:
    server.disconnect_after = 2
    received: list[str] = []
    with pytest.raises(LLMError) as info:
        for token in make_llm(server).stream("q"):
            received.append(token)
    assert received == TOKENS[:2]
    message = str(info.value)
    assert server.base_url in message
    assert "dropped the connection mid-stream after 2 text chunks" in message
    assert info.value.status_code is None


async def test_async_mid_stream_disconnect_is_an_llm_error_after_the_partial_answer(
    server: FakeOpenAIServer,
) -> None:
    server.disconnect_after = 3
    received: list[str] = []
    with pytest.raises(LLMError) as info:
        async for token in make_llm(server).astream("q"):
            received.append(token)
    assert received == TOKENS[:3]
    assert server.base_url in str(info.value)
    assert "mid-stream after 3 text chunks" in str(info.value)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_refused_connection_is_an_llm_error_naming_the_server(mode: str) -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    llm = OpenAICompatibleLLM("m", base_url=base_url, max_retries=0)
    with pytest.raises(LLMError) as info:
        if mode == "sync":
            list(llm.stream("q"))
        else:
            asyncio.run(collect(llm, "q"))
    assert str(info.value).startswith(f"cannot connect to LLM server {base_url} (model 'm')")
    assert isinstance(info.value.__cause__, openai.APIConnectionError)


def test_max_retries_is_passed_to_the_sdk(server: FakeOpenAIServer) -> None:
    server.fail_status, server.fail_times = 503, 1  # one failure, then a normal stream
    with pytest.raises(LLMError, match="HTTP 503"):
        list(make_llm(server).stream("q"))  # max_retries=0: the failure surfaces
    server.fail_times = 1
    retrying = OpenAICompatibleLLM("test-model", base_url=server.base_url, max_retries=1)
    assert list(retrying.stream("q")) == TOKENS
    assert len(server.requests) == 3


# -- construction ----------------------------------------------------------------------------------
def test_api_key_defaults_to_env_then_placeholder(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert list(OpenAICompatibleLLM("m", base_url=server.base_url).stream("q")) == TOKENS
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert list(OpenAICompatibleLLM("m", base_url=server.base_url).stream("q")) == TOKENS
    assert [r.headers["authorization"] for r in server.requests] == [
        f"Bearer {PLACEHOLDER_API_KEY}",
        "Bearer sk-from-env",
    ]


def test_repr_shows_model_and_base_url_but_never_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    llm = OpenAICompatibleLLM("llama3.1", base_url="http://localhost:11434/v1/", api_key="sk-42")
    assert (
        repr(llm) == "OpenAICompatibleLLM(model='llama3.1', base_url='http://localhost:11434/v1')"
    )
    assert "sk-42" not in repr(llm)
    assert OpenAICompatibleLLM("gpt-4o-mini").base_url == "https://api.openai.com/v1"


def test_satisfies_both_protocols_so_the_pipeline_uses_the_async_strategy() -> None:
    llm = OpenAICompatibleLLM("m", base_url="http://127.0.0.1:9/v1")
    assert isinstance(llm, AsyncStreamableLLM)
    assert isinstance(llm, SyncStreamableLLM)
    assert StreamingRAG(Backend(), llm).strategy == "async"


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        (("",), {}, "model must be a non-empty"),
        (("m",), {"stream": False}, "stream cannot be passed"),
        (("m",), {"messages": []}, "messages cannot be passed"),
        (("m",), {"max_retries": -1}, "max_retries must be"),
        (("m",), {"timeout": 0}, "timeout must be"),
    ],
)
def test_invalid_settings_raise_config_error(
    args: tuple[str], kwargs: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        OpenAICompatibleLLM(*args, **kwargs)  # type: ignore[arg-type]


# -- through StreamingRAG --------------------------------------------------------------------------
def test_streaming_rag_query_streams_the_server_answer(server: FakeOpenAIServer) -> None:
    rag = StreamingRAG(Backend(), make_llm(server))
    result = rag.query("Why is the sky blue?")
    assert result["answer"] == "".join(TOKENS)
    chunks = [e.data for e in result["events"] if e.type is EventType.CHUNK]
    assert chunks == TOKENS
    assert result["events"][-1].type is EventType.GENERATION_DONE
    prompt = server.requests[0].prompt
    assert DOC in prompt
    assert "Why is the sky blue?" in prompt


def test_streaming_rag_error_event_names_the_server_and_status(
    server: FakeOpenAIServer,
) -> None:
    server.fail_status = 500
    result = StreamingRAG(Backend(), make_llm(server)).query("q")
    last = result["events"][-1]
    assert last.type is EventType.ERROR
    assert last.data["stage"] == "generation"
    assert server.base_url in last.data["msg"]
    assert "HTTP 500 Internal Server Error: the model crashed" in last.data["msg"]
    assert result["answer"] == ""


def test_streaming_rag_mid_stream_disconnect_keeps_the_partial_answer(
    server: FakeOpenAIServer,
) -> None:
    server.disconnect_after = 2
    result = StreamingRAG(Backend(), make_llm(server)).query("q")
    assert result["answer"] == "".join(TOKENS[:2])
    last = result["events"][-1]
    assert last.type is EventType.ERROR
    assert server.base_url in last.data["msg"]
    assert "mid-stream" in last.data["msg"]


def test_streaming_rag_consumer_stopping_early_closes_the_http_response(
    server: FakeOpenAIServer,
) -> None:
    server.pause_after = 2
    rag = StreamingRAG(Backend(), make_llm(server))
    stream = rag.stream("q")
    assert next(stream) == TOKENS[0]
    stream.close()
    assert server.disconnected.wait(WAIT_S)
    assert not server.finished.is_set()


# -- the worker factory ----------------------------------------------------------------------------
@pytest.fixture
def docs(tmp_path: Path) -> Path:
    (tmp_path / "sky.md").write_text(f"# Sky\n\n{DOC}\n", encoding="utf-8")
    (tmp_path / "grass.txt").write_text("Grass is green because of chlorophyll.\n")
    return tmp_path


def test_openai_app_answers_from_the_folder_with_the_configured_server(
    server: FakeOpenAIServer, docs: Path
) -> None:
    env = {
        DOCS_ENV: str(docs),
        BASE_URL_ENV: server.base_url,
        MODEL_ENV: "llama3.1",
        API_KEY_ENV: "sk-worker",
        "OPENAI_API_KEY": "sk-ignored",
    }
    app = openai_app(env=env, temperature=0.0, max_retries=0)
    assert app.strategy == "async"
    result = app.query("Why is the sky blue?")
    assert result["answer"] == "".join(TOKENS)
    retrieval = next(e for e in result["events"] if e.type is EventType.RETRIEVAL_DONE)
    assert retrieval.data["docs"][0]["metadata"]["source"] == "sky.md"
    (request,) = server.requests
    assert request.body["model"] == "llama3.1"
    assert request.body["temperature"] == 0.0
    assert request.headers["authorization"] == "Bearer sk-worker"
    assert DOC in request.prompt
    assert "chlorophyll" not in request.prompt


def test_openai_app_reads_os_environ_and_falls_back_to_openai_api_key(
    server: FakeOpenAIServer, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DOCS_ENV, str(docs))
    monkeypatch.setenv(BASE_URL_ENV, server.base_url)
    monkeypatch.setenv(MODEL_ENV, "qwen2.5")
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert openai_app().query("sky")["answer"] == "".join(TOKENS)
    assert server.requests[0].headers["authorization"] == "Bearer sk-openai"
    assert server.requests[0].body["model"] == "qwen2.5"


@pytest.mark.parametrize(
    ("missing", "fragment"),
    [(MODEL_ENV, MODEL_ENV), (DOCS_ENV, DOCS_ENV)],
)
def test_openai_app_names_a_missing_variable(docs: Path, missing: str, fragment: str) -> None:
    env = {DOCS_ENV: str(docs), MODEL_ENV: "m", BASE_URL_ENV: "http://127.0.0.1:9/v1"}
    del env[missing]
    with pytest.raises(WorkerConfigError, match=fragment):
        openai_app(env=env)


def test_openai_app_rejects_a_folder_without_documents(tmp_path: Path) -> None:
    env = {DOCS_ENV: str(tmp_path), MODEL_ENV: "m"}
    with pytest.raises(WorkerConfigError, match=r"no \.md or \.txt files"):
        openai_app(env=env)


# -- optional dependency ---------------------------------------------------------------------------
def test_importing_the_adapters_imports_no_sdk() -> None:
    code = (
        "import sys, streaming_rag, streaming_rag.llms; "
        "print(','.join(m for m in ('openai', 'langchain_core') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_missing_sdk_error_names_the_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['openai'] = None\n"
        "from streaming_rag.llms import OpenAICompatibleLLM\n"
        "llm = OpenAICompatibleLLM('m', base_url='http://127.0.0.1:9/v1')\n"
        "try:\n"
        "    list(llm.stream('q'))\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install -e ".[openai]"' in out.stdout
