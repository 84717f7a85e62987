"""`openai_app()`: BM25 over your documents, answers streamed by an OpenAI-compatible server.

The no-code setup for the common case: a folder of ``.md`` / ``.txt`` notes and an LLM server
speaking the OpenAI chat-completions API (OpenAI itself, vLLM, Ollama, the llama.cpp server,
LM Studio). Run it with::

    pip install -e ".[openai]"          # from a clone of streaming-rag
    STREAMING_RAG_DOCS=./kb \\
    STREAMING_RAG_LLM_BASE_URL=http://localhost:11434/v1 \\
    STREAMING_RAG_LLM_MODEL=llama3.1 \\
    streaming-rag worker --app streaming_rag_worker.llm_app:openai_app

(or ``streaming-rag worker --docs ./kb --llm-base-url URL --llm-model NAME``, which sets
these variables and picks this factory). Environment variables:

- ``STREAMING_RAG_DOCS`` (required): the folder, indexed once at startup by
  `streaming_rag_worker.demo_app.BM25Retriever.from_folder`; the top 4 documents of each
  question are the prompt's context.
- ``STREAMING_RAG_LLM_MODEL`` (required): the model name the server knows.
- ``STREAMING_RAG_LLM_BASE_URL`` (optional): the server's ``/v1`` URL; OpenAI's API (or
  ``OPENAI_BASE_URL``) when unset.
- ``STREAMING_RAG_LLM_API_KEY`` (optional): falls back to ``OPENAI_API_KEY``, then to a
  placeholder that local servers accept.
- ``STREAMING_RAG_LLM_MAX_TOKENS`` (optional): a positive integer, sent as ``max_tokens``
  (a ``max_tokens`` parameter passed to `openai_app` wins).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from streaming_rag import StreamConfig, StreamingRAG
from streaming_rag.exceptions import WorkerConfigError
from streaming_rag.llms import OpenAICompatibleLLM

from .demo_app import DOCS_ENV, BM25Retriever, ExtractiveRAG

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_GENERATION_TIMEOUT_S",
    "DOCS_ENV",
    "MAX_TOKENS_ENV",
    "MODEL_ENV",
    "openai_app",
]

BASE_URL_ENV = "STREAMING_RAG_LLM_BASE_URL"
MODEL_ENV = "STREAMING_RAG_LLM_MODEL"
API_KEY_ENV = "STREAMING_RAG_LLM_API_KEY"
MAX_TOKENS_ENV = "STREAMING_RAG_LLM_MAX_TOKENS"
#: A whole answer may take this long (local models on a CPU are slow); the library's
#: default of 60 s is meant for the simulation strategy.
DEFAULT_GENERATION_TIMEOUT_S = 300.0


def openai_app(
    *,
    env: Mapping[str, str] | None = None,
    config: StreamConfig | None = None,
    **params: Any,
) -> StreamingRAG:
    """A `StreamingRAG` over the folder ``STREAMING_RAG_DOCS`` answering with
    `OpenAICompatibleLLM` (see the module docstring for the variables).

    `env` replaces `os.environ` (for tests and embedding); `config` defaults to
    `StreamConfig(generation_timeout=DEFAULT_GENERATION_TIMEOUT_S)`; `params` (``temperature``,
    ``max_tokens``, ...) go to the LLM. Raises `WorkerConfigError` naming the variable
    when the model or the folder is missing, or the folder cannot be served.
    """
    environ = os.environ if env is None else env
    folder = environ.get(DOCS_ENV, "").strip()
    model = environ.get(MODEL_ENV, "").strip()
    if not folder:
        raise WorkerConfigError(
            f"openai_app needs a folder of .md/.txt files: set {DOCS_ENV} "
            "(or pass --docs DIR to `streaming-rag worker`)"
        )
    if not model:
        raise WorkerConfigError(
            f"openai_app needs the LLM's model name: set {MODEL_ENV} "
            "(or pass --llm-model NAME to `streaming-rag worker`)"
        )
    try:
        retriever = BM25Retriever.from_folder(folder)
    except OSError as exc:
        raise WorkerConfigError(
            f"cannot serve documents from {folder!r} ({DOCS_ENV}): {exc}"
        ) from None
    base_url = environ.get(BASE_URL_ENV, "").strip() or environ.get("OPENAI_BASE_URL")
    api_key = environ.get(API_KEY_ENV) or environ.get("OPENAI_API_KEY")
    max_tokens = environ.get(MAX_TOKENS_ENV, "").strip()
    if max_tokens and "max_tokens" not in params:
        if not max_tokens.isdigit() or int(max_tokens) < 1:
            raise WorkerConfigError(
                f"{MAX_TOKENS_ENV} must be a positive integer, got {max_tokens!r}"
            )
        params["max_tokens"] = int(max_tokens)
    llm = OpenAICompatibleLLM(model, base_url=base_url or None, api_key=api_key or None, **params)
    if config is None:
        config = StreamConfig(generation_timeout=DEFAULT_GENERATION_TIMEOUT_S)
    return StreamingRAG(ExtractiveRAG(retriever), llm, config=config)
