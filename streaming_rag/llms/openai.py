"""`OpenAICompatibleLLM`: stream chat-completion deltas from any OpenAI-compatible server.

Built on the official ``openai`` SDK (``pip install -e ".[openai]"`` from a clone), imported only
when a stream starts. One adapter serves OpenAI, vLLM, Ollama, the llama.cpp server and
LM Studio: point `base_url` at the server's ``/v1``.

- `stream(prompt)` (sync `OpenAI` client) and `astream(prompt)` (`AsyncOpenAI` client) send
  ``[{"role": "user", "content": prompt}]`` (after an optional system message) with
  ``stream=True`` and the sampling parameters given to the constructor, and yield each
  non-empty ``choices[0].delta.content`` as it arrives.
- Closing the generator early (or an error, a timeout, cancellation) closes the SDK's stream
  object, so the HTTP response is closed and the server sees the client go away.
- Failures of the SDK (an HTTP error status, a refused, timed-out or dropped connection, an
  error or invalid JSON in the stream) are re-raised as `streaming_rag.exceptions.LLMError`,
  whose message names the server, the model and the status or reason; the SDK's exception is
  its ``__cause__``.
- Usage: the request asks for the server's usage report (``stream_options:
  {"include_usage": true}``, turned off with ``include_usage=False``). While it streams, the
  adapter fills the `Usage` of the running context (`streaming_rag.llms.usage.current_usage`,
  when a caller collects it) and `last_usage`: the model name and finish reason from the
  chunks, the reported prompt and completion tokens, or, until a report arrives (a cancelled
  or failed stream never gets one), the text chunks yielded so far as `completion_tokens`
  (``reported=False``).
- Clients are created on first use and reused: one sync client, and one async client per
  running event loop (an httpx connection pool belongs to the loop that opened it; clients of
  loops that have since closed are dropped). `close()` / `aclose()` release them.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigError, LLMError
from .usage import Usage, current_usage

if TYPE_CHECKING:
    from openai import AsyncOpenAI, OpenAI

__all__ = ["DEFAULT_BASE_URL", "PLACEHOLDER_API_KEY", "OpenAICompatibleLLM"]

#: The server used when neither `base_url` nor the env variable ``OPENAI_BASE_URL`` is set.
DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: The API key sent when neither `api_key` nor ``OPENAI_API_KEY`` is set: local servers
#: (Ollama, vLLM, llama.cpp, LM Studio) ignore it, but the SDK insists on having one.
PLACEHOLDER_API_KEY = "not-needed"

#: Request fields the adapter sets itself; passing them as sampling parameters is an error.
_RESERVED = frozenset({"model", "messages", "stream"})
_INSTALL_HINT = (
    'OpenAICompatibleLLM needs the openai SDK: pip install -e ".[openai]" from a clone of '
    "streaming-rag (or pip install openai)"
)


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return openai


def _delta_text(chunk: Any) -> str | None:
    """``choices[0].delta.content`` of a chat-completion chunk, or None (usage-only chunks
    have no choices; role-only and finish chunks have no content)."""
    choices = getattr(chunk, "choices", None)
    if not choices:
        return None
    delta = getattr(choices[0], "delta", None)
    content = getattr(delta, "content", None)
    return content if isinstance(content, str) else None


def _note(chunk: Any, usage: Usage) -> None:
    """Record what a chunk tells about the call: the model, a finish reason, the usage."""
    model = getattr(chunk, "model", None)
    if isinstance(model, str) and model:
        usage.model = model
    choices = getattr(chunk, "choices", None)
    if choices:
        reason = getattr(choices[0], "finish_reason", None)
        if isinstance(reason, str) and reason:
            usage.finish_reason = reason
    report = getattr(chunk, "usage", None)
    if report is not None:
        prompt = getattr(report, "prompt_tokens", None)
        completion = getattr(report, "completion_tokens", None)
        if isinstance(completion, int):
            usage.completion_tokens = completion
            usage.prompt_tokens = prompt if isinstance(prompt, int) else None
            usage.reported = True


def _cause(exc: BaseException) -> str:
    """The most specific reason behind an SDK connection error (httpx's message)."""
    inner = exc.__cause__ or exc.__context__
    text = str(inner) if inner is not None else ""
    return text or str(exc) or type(exc).__name__


class OpenAICompatibleLLM:
    """A streaming LLM on an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    `model` is the model name the server knows (``gpt-4o-mini``, ``llama3.1``, ...).
    `base_url` defaults to the env variable ``OPENAI_BASE_URL``, else OpenAI's API; `api_key`
    to ``OPENAI_API_KEY``, else `PLACEHOLDER_API_KEY` (fine for local servers). `system_prompt`
    is sent as a system message before the prompt. `timeout` (seconds, None for the SDK's
    default) and `max_retries` (the SDK retries connection errors, 408/409/429 and 5xx before
    the stream starts) configure the clients. Every other keyword (``temperature``,
    ``max_tokens``, ``top_p``, ``stop``, ``seed``, ``extra_body``, ...) is passed to
    ``chat.completions.create`` unchanged. `include_usage` (default True) asks the server for
    its usage report (``stream_options.include_usage``); `last_usage` is the `Usage` of the
    latest stream (the context's holder, see `streaming_rag.llms.usage`, gets the same).

    Satisfies both `AsyncStreamableLLM` and `SyncStreamableLLM`, so `StreamingRAG` uses
    `astream`. The key never appears in `repr`.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        system_prompt: str | None = None,
        timeout: float | None = None,
        max_retries: int = 2,
        include_usage: bool = True,
        **params: Any,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"model must be a non-empty model name, got {model!r}")
        reserved = sorted(_RESERVED.intersection(params))
        if reserved:
            raise ConfigError(
                f"{', '.join(reserved)} cannot be passed as sampling parameters: "
                "OpenAICompatibleLLM sets them itself"
            )
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip(
            "/"
        )
        self.system_prompt = system_prompt
        self.timeout = timeout
        self.max_retries = max_retries
        self.params: dict[str, Any] = dict(params)
        self.include_usage = bool(include_usage)
        #: The `Usage` of the latest stream started (filled while it runs); None before any.
        self.last_usage: Usage | None = None
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or PLACEHOLDER_API_KEY
        self._lock = threading.Lock()
        self._sync_client: OpenAI | None = None
        self._async_clients: dict[asyncio.AbstractEventLoop, AsyncOpenAI] = {}

    def __repr__(self) -> str:
        return f"OpenAICompatibleLLM(model={self.model!r}, base_url={self.base_url!r})"

    # -- clients ---------------------------------------------------------------------------
    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "api_key": self._api_key,
            "base_url": self.base_url,
            "max_retries": self.max_retries,
        }
        if self.timeout is not None:
            kwargs["timeout"] = self.timeout
        return kwargs

    def _sync(self) -> OpenAI:
        with self._lock:
            if self._sync_client is None:
                self._sync_client = _import_openai().OpenAI(**self._client_kwargs())
            return self._sync_client

    def _async(self) -> AsyncOpenAI:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async_clients.get(loop)
            if client is None:
                # drop the clients of loops that have closed (their pools died with them)
                for old in [lp for lp in self._async_clients if lp.is_closed()]:
                    del self._async_clients[old]
                client = _import_openai().AsyncOpenAI(**self._client_kwargs())
                self._async_clients[loop] = client
            return client

    def close(self) -> None:
        """Close the sync client (its connection pool); the next `stream` makes a new one."""
        with self._lock:
            client, self._sync_client = self._sync_client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the async client of the running loop; the next `astream` makes a new one."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async_clients.pop(loop, None)
        if client is not None:
            await client.close()

    # -- streaming -------------------------------------------------------------------------
    def _request(self, prompt: str) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        request = {**self.params, "model": self.model, "messages": messages, "stream": True}
        if self.include_usage:
            options = request.get("stream_options")
            merged = dict(options) if isinstance(options, dict) else {}
            merged.setdefault("include_usage", True)
            request["stream_options"] = merged
        return request

    def _usage(self) -> Usage:
        """The holder this stream fills: the context's, else a private one."""
        usage = current_usage()
        if usage is None:
            usage = Usage()
        usage.model = usage.model or self.model
        self.last_usage = usage
        return usage

    def _error(self, exc: Exception, *, chunks: int | None) -> LLMError:
        """Translate an SDK failure; `chunks` (texts yielded) is None before the response
        started."""
        openai = _import_openai()
        where = f"LLM server {self.base_url} (model {self.model!r})"
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            reason = getattr(exc.response, "reason_phrase", "") or ""
            body = exc.body
            detail = body.get("message") if isinstance(body, dict) else None
            if not isinstance(detail, str) or not detail:
                detail = str(body)[:300] if body else exc.message
            return LLMError(
                f"{where} answered HTTP {status} {reason}".rstrip() + f": {detail}",
                status_code=status,
            )
        if isinstance(exc, openai.APITimeoutError):
            return LLMError(
                f"{where} timed out" + (f" after {chunks} text chunks" if chunks else "")
            )
        if isinstance(exc, openai.APIConnectionError):
            if chunks is None:
                return LLMError(f"cannot connect to {where}: {_cause(exc)}")
            return LLMError(
                f"{where} dropped the connection mid-stream after {chunks} text chunks: "
                + _cause(exc)
            )
        if isinstance(exc, openai.APIError):
            return LLMError(f"{where} reported an error mid-stream: {exc.message}")
        if chunks is not None and isinstance(exc, ValueError):  # invalid JSON in an event
            return LLMError(f"{where} sent an invalid stream: {exc}")
        return LLMError(f"{where}: {type(exc).__name__}: {exc}")

    def _translatable(self) -> tuple[type[Exception], ...]:
        return (_import_openai().OpenAIError, ValueError)

    def stream(self, prompt: str) -> Generator[str, None, None]:
        """Yield the answer's text deltas as the server sends them (blocking I/O)."""
        client = self._sync()
        errors = self._translatable()
        try:
            response = client.chat.completions.create(**self._request(prompt))
        except errors as exc:
            raise self._error(exc, chunks=None) from exc
        chunks = 0
        usage = self._usage()
        try:
            for chunk in response:
                _note(chunk, usage)
                text = _delta_text(chunk)
                if text:
                    chunks += 1
                    if not usage.reported:
                        usage.completion_tokens = chunks
                    yield text
        except errors as exc:
            raise self._error(exc, chunks=chunks) from exc
        finally:
            response.close()

    async def astream(self, prompt: str) -> AsyncGenerator[str, None]:
        """Yield the answer's text deltas as the server sends them (asyncio)."""
        client = self._async()
        errors = self._translatable()
        try:
            response = await client.chat.completions.create(**self._request(prompt))
        except errors as exc:
            raise self._error(exc, chunks=None) from exc
        chunks = 0
        usage = self._usage()
        try:
            async for chunk in response:
                _note(chunk, usage)
                text = _delta_text(chunk)
                if text:
                    chunks += 1
                    if not usage.reported:
                        usage.completion_tokens = chunks
                    yield text
        except errors as exc:
            raise self._error(exc, chunks=chunks) from exc
        finally:
            await response.close()
