"""`LangChainLLM`: stream text from any LangChain chat model or runnable.

Needs ``langchain-core`` (``pip install -e ".[langchain]"`` from a clone), imported when an adapter
is built, never when `streaming_rag` is.

`stream(prompt)` / `astream(prompt)` call the runnable's own ``stream`` / ``astream`` with the
prompt string (a chat model turns it into one human message) and yield text:

- a `str` chunk as is (chains ending in ``StrOutputParser``, string-yielding runnables);
- a message chunk's ``content`` when it is a str;
- when ``content`` is a list of content parts (Anthropic, multimodal and reasoning models),
  the concatenation of its text parts (str parts and ``{"type": "text", "text": ...}``
  dicts); other parts (tool calls, images, reasoning) are skipped.

Empty texts are not yielded. Anything else the runnable yields raises `TypeError`. Errors
raised by the runnable are re-raised as `streaming_rag.exceptions.LLMError` naming the
runnable and the original error (chained as ``__cause__``). The runnable's iterator is always
closed: at the end, on an error, and when the consumer stops early.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Generator, Mapping
from typing import Any

from ..exceptions import BackendError, LLMError

__all__ = ["LangChainLLM", "chunk_text"]

_INSTALL_HINT = (
    'LangChainLLM needs langchain-core: pip install -e ".[langchain]" from a clone of '
    "streaming-rag (or pip install langchain-core)"
)


def chunk_text(chunk: Any) -> str:
    """The text of one streamed item (see the module docstring); `TypeError` if it has none."""
    if isinstance(chunk, str):
        return chunk
    content = getattr(chunk, "content", None)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return "".join(parts)
    raise TypeError(
        f"LangChainLLM: the runnable yielded {type(chunk).__name__}, which has no text; "
        "expected message chunks or strings (end a chain with StrOutputParser())"
    )


class LangChainLLM:
    """Adapt a LangChain chat model or runnable to `StreamingRAG`'s LLM protocols.

    `runnable` needs ``stream`` and ``astream`` (every LangChain ``Runnable`` has both);
    `config` (a ``RunnableConfig`` dict: callbacks, tags, metadata, ...) is passed to every
    call. Satisfies both `AsyncStreamableLLM` and `SyncStreamableLLM`, so `StreamingRAG`
    uses `astream`.
    """

    def __init__(self, runnable: Any, *, config: Mapping[str, Any] | None = None) -> None:
        try:
            import langchain_core  # noqa: F401
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        missing = [
            name for name in ("stream", "astream") if not callable(getattr(runnable, name, None))
        ]
        if missing:
            raise BackendError(
                f"LangChainLLM needs a LangChain Runnable with stream() and astream(); "
                f"{type(runnable).__name__} has no {' or '.join(missing)}()"
            )
        self.runnable = runnable
        self.config: dict[str, Any] | None = dict(config) if config is not None else None

    def __repr__(self) -> str:
        return f"LangChainLLM({self._name()})"

    def _name(self) -> str:
        name = getattr(self.runnable, "name", None)
        return name if isinstance(name, str) and name else type(self.runnable).__name__

    def _error(self, exc: Exception) -> LLMError:
        return LLMError(f"LangChain runnable {self._name()} failed: {type(exc).__name__}: {exc}")

    def stream(self, prompt: str) -> Generator[str, None, None]:
        """Yield the text of each chunk of ``runnable.stream(prompt)``."""
        try:
            source = iter(self.runnable.stream(prompt, config=self.config))
        except Exception as exc:
            raise self._error(exc) from exc
        try:
            while True:
                try:
                    chunk = next(source)
                except StopIteration:
                    return
                except Exception as exc:
                    raise self._error(exc) from exc
                text = chunk_text(chunk)
                if text:
                    yield text
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    async def astream(self, prompt: str) -> AsyncGenerator[str, None]:
        """Yield the text of each chunk of ``runnable.astream(prompt)``."""
        try:
            result = self.runnable.astream(prompt, config=self.config)
            if not hasattr(result, "__anext__"):
                if inspect.isawaitable(result):
                    result = await result
                result = result.__aiter__()
        except Exception as exc:
            raise self._error(exc) from exc
        source: Any = result
        try:
            while True:
                try:
                    chunk = await source.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise self._error(exc) from exc
                text = chunk_text(chunk)
                if text:
                    yield text
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()
