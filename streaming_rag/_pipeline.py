"""`StreamingRAG`: the async pipeline behind every surface, plus its sync twins and stats."""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Callable, Generator
from contextlib import aclosing, closing
from typing import Any

from ._config import StreamConfig, validate_config
from ._deadline import Deadline, current_task_getter
from ._documents import build_context, normalize_docs
from ._events import EventType, StreamEvent, chunk_event
from ._generation import Strategy, open_stream, select_strategy
from ._sync_bridge import iterate_in_thread
from ._threads import run_in_thread
from .exceptions import BackendError, NoGeneratorError
from .stats import StreamStats

__all__ = ["StreamingRAG"]

logger = logging.getLogger("streaming_rag")

RETRIEVAL_TIMEOUT_MSG = "Retrieval timed out"
GENERATION_TIMEOUT_MSG = "Generation timed out"


def _latency(seconds: float) -> float:
    """`seconds` rounded to 4 decimals (cheaper than `round(x, 4)`, same result for the
    non-negative values a monotonic clock gives)."""
    return int(seconds * 10000.0 + 0.5) / 10000.0


def _error_message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _close_source(source: Any) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.warning("closing the LLM stream raised; ignored", exc_info=True)


class StreamingRAG:
    """Wrap a RAG backend and stream its answers as typed `StreamEvent`s.

    `rag_system` must have `.retrieve(query)` (sync or async; a sync one runs in a daemon
    thread so it never blocks the loop); `.generate(query, context)` is needed only when no
    streaming LLM is available (strategy 3). `llm` falls back to `rag_system.llm` when None.
    The strategy is chosen once, here: async LLM → sync LLM → simulation.

    `config` is shallow-copied; `chunk_size=` overrides the copy only. The configuration is
    validated now: an unusable value (e.g. a template without `{context}` and `{query}`)
    raises `ConfigError`, a `ValueError`.

    Callbacks run synchronously in the thread running the stream: `on_chunk(text)` before each
    CHUNK event, `on_event(event)` before every event is yielded. Their exceptions propagate
    to the consumer and are not turned into ERROR events.

    Statistics are kept under a lock, so many concurrent streams (tasks, or threads using the
    sync surface) on one instance count correctly.
    """

    def __init__(
        self,
        rag_system: Any,
        llm: Any = None,
        config: StreamConfig | None = None,
        *,
        chunk_size: int | None = None,
        on_chunk: Callable[[str], None] | None = None,
        on_event: Callable[[StreamEvent], None] | None = None,
    ) -> None:
        if rag_system is None or not callable(getattr(rag_system, "retrieve", None)):
            raise BackendError(
                f"rag_system must expose .retrieve(query) (sync or async); got "
                f"{type(rag_system).__name__}"
            )
        self.config = copy.copy(config) if config is not None else StreamConfig()
        if chunk_size is not None:
            self.config.chunk_size = chunk_size
        validate_config(self.config)
        self.rag_system = rag_system
        self.llm = llm if llm is not None else getattr(rag_system, "llm", None)
        self.strategy: Strategy = select_strategy(self.llm)
        self.on_chunk = on_chunk
        self.on_event = on_event
        self._stats = StreamStats()

    def __repr__(self) -> str:
        return f"StreamingRAG(llm={self.strategy}, chunk_size={self.config.chunk_size})"

    # -- statistics -------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """Cumulative counters since construction; `avg_stream_latency_s` over completed
        streams (those that reached GENERATION_DONE), 3 decimals, `0.0` before any."""
        return self._stats.snapshot()

    # -- the core ---------------------------------------------------------------------------
    def _check_generator(self) -> None:
        if self.strategy == "sim" and not callable(getattr(self.rag_system, "generate", None)):
            raise NoGeneratorError(
                f"{type(self.rag_system).__name__} has no .generate(query, context) and no "
                "streaming LLM was found (llm=None and no rag_system.llm). Pass llm= an object "
                "implementing SyncStreamableLLM (.stream(prompt)) or AsyncStreamableLLM "
                "(.astream(prompt)), or give the RAG system a generate() method."
            )

    async def _retrieve(self, query: str) -> Any:
        retrieve = self.rag_system.retrieve
        if inspect.iscoroutinefunction(retrieve):
            result = await retrieve(query)
        else:
            result = await run_in_thread(retrieve, query, name="streaming-rag-retrieve")
        if inspect.isawaitable(result):
            result = await result
        return result

    def _event(self, type_: EventType, data: Any, latency: float) -> StreamEvent:
        event = StreamEvent(type_, data, latency)
        if type_ is EventType.ERROR:
            self._stats.errored()
            logger.info("stream ended with an error at %s: %s", data["stage"], data["msg"])
        if self.on_event is not None:
            self.on_event(event)
        return event

    async def astream_events(
        self, query: str, context: dict[str, Any] | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Yield every event of one stream in lifecycle order; the core of all surfaces.

        RETRIEVAL_START, RETRIEVAL_DONE, GENERATION_START, CHUNK*, then GENERATION_DONE or
        ERROR; nothing follows an ERROR. `context` is forwarded to `rag_system.generate` in
        strategy 3 only (`{}` when None). Raises `NoGeneratorError` (an `AttributeError`)
        before the first event when no generation strategy is possible; such a call is not
        counted in `stats`. The LLM stream is always closed before the terminal event, and
        also when the consumer stops early or the task is cancelled.
        """
        self._check_generator()
        cfg = self.config
        self._stats.started()
        clock = time.perf_counter
        t0 = clock()
        yield self._event(EventType.RETRIEVAL_START, {"query": query}, 0.0)

        # -- retrieval ---------------------------------------------------------------------
        failure: str | None = None
        timer = asyncio.timeout(cfg.retrieval_timeout)
        try:
            async with timer:
                raw = await self._retrieve(query)
            docs = normalize_docs(raw)
        except TimeoutError as exc:
            failure = RETRIEVAL_TIMEOUT_MSG if timer.expired() else _error_message(exc)
        except Exception as exc:
            logger.debug("retrieval raised", exc_info=True)
            failure = _error_message(exc)
        if failure is not None:
            data = {"msg": failure, "stage": "retrieval"}
            yield self._event(EventType.ERROR, data, _latency(clock() - t0))
            return
        yield self._event(
            EventType.RETRIEVAL_DONE,
            {"num_docs": len(docs), "docs": docs},
            _latency(clock() - t0),
        )

        ctx_block = build_context(docs, max_docs=cfg.max_context_docs, max_chars=cfg.max_doc_chars)
        prompt = cfg.prompt_template.format(context=ctx_block, query=query)
        yield self._event(
            EventType.GENERATION_START, {"prompt_chars": len(prompt)}, _latency(clock() - t0)
        )

        # -- generation --------------------------------------------------------------------
        # The hot loop: one iteration per token. Kept flat on purpose (no per-token helper
        # calls); see bench/overhead.py.
        deadline = Deadline(cfg.generation_timeout)
        current_task = current_task_getter(asyncio.get_running_loop())
        on_chunk, on_event = self.on_chunk, self.on_event
        source: Any = None
        anext_: Any = None
        chunks = 0
        try:
            while True:
                if deadline.expired:
                    failure = GENERATION_TIMEOUT_MSG
                    break
                deadline.waiting = current_task()
                try:
                    if source is None:
                        source = await open_stream(
                            self.strategy,
                            llm=self.llm,
                            rag_system=self.rag_system,
                            prompt=prompt,
                            query=query,
                            context=context if context is not None else {},
                            config=cfg,
                        )
                        anext_ = source.__anext__
                    token = await anext_()
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if deadline.claim_cancel():
                        failure = GENERATION_TIMEOUT_MSG
                        break
                    raise
                except Exception as exc:
                    logger.debug("generation raised", exc_info=True)
                    failure = _error_message(exc)
                    break
                finally:
                    deadline.waiting = None
                if token is None:
                    continue
                if type(token) is not str:
                    token = str(token)
                if on_chunk is not None:
                    on_chunk(token)
                chunks += 1
                event = chunk_event(token, _latency(clock() - t0))
                if on_event is not None:
                    on_event(event)
                yield event
        finally:
            deadline.disarm()
            self._stats.add_chunks(chunks)
            if source is not None:
                await _close_source(source)

        if failure is not None:
            data = {"msg": failure, "stage": "generation"}
            yield self._event(EventType.ERROR, data, _latency(clock() - t0))
            return
        total = _latency(clock() - t0)
        self._stats.completed(total)
        yield self._event(EventType.GENERATION_DONE, {"total_latency": total}, total)

    async def astream(
        self, query: str, context: dict[str, Any] | None = None
    ) -> AsyncGenerator[str, None]:
        """Yield only the chunk texts of `astream_events` (callbacks still fire for all)."""
        async with aclosing(self.astream_events(query, context)) as events:
            async for event in events:
                if event.type is EventType.CHUNK:
                    yield event.data

    # -- synchronous surface ----------------------------------------------------------------
    def stream_events(
        self, query: str, context: dict[str, Any] | None = None
    ) -> Generator[StreamEvent, None, None]:
        """Yield every event of `astream_events`, run on a private loop in a daemon thread.

        Events cross over a `queue.Queue` (blocking get, `None` sentinel), in batches of what
        the loop produced while the consumer was busy, never held back. Exceptions re-raise
        here with their original type. Closing early (a `break`) cancels the background
        stream, closes the LLM stream and joins the thread. Safe to call from inside a running
        event loop (it blocks that loop's thread while iterating, as any sync call does).
        """
        return iterate_in_thread(
            lambda: self.astream_events(query, context), name="streaming-rag-stream"
        )

    def stream(
        self, query: str, context: dict[str, Any] | None = None
    ) -> Generator[str, None, None]:
        """Yield only the chunk texts of `stream_events` (callbacks still fire for all)."""
        with closing(self.stream_events(query, context)) as events:
            for event in events:
                if event.type is EventType.CHUNK:
                    yield event.data

    def query(self, query: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one stream to the end; return `{"answer": str, "events": list[StreamEvent]}`.

        `answer` concatenates every CHUNK (partial if the stream ended with ERROR, `""` if no
        chunk came); `events` is the full ordered trace, terminal event included.
        """
        events = list(self.stream_events(query, context))
        return {"answer": "".join(str(e) for e in events), "events": events}
