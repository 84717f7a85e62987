"""The bridge's page in a real headless Chromium (Debian's `chromium`, driven by Playwright):
it renders a job's whole answer live, with retrieval and timing beside it, and two tabs
watching one job show the same answer. Skipped (with the reason printed) only when
Playwright or /usr/bin/chromium is not installed; Playwright's own browsers are never used."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from streaming_rag import StreamingRAG
from tests.helpers_web import MOUNT, WAIT_S, web_stack
from tests.queue_apps import ANSWER_WORDS, GatedLLM, WordsLLM

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = WAIT_S * 1000
ANSWER = "".join(w + " " for w in ANSWER_WORDS)


def _unavailable() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not installed ({exc}): pip install -e '.[dev]'"
    if not CHROMIUM.exists():
        return (
            f"{CHROMIUM} is missing: install Debian's chromium package "
            "(apt-get install chromium; .ci/run does it when run as root)"
        )
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    reason = _unavailable()
    if reason is not None:
        print(f"SKIPPING the browser tests: {reason}")
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


class SourcedBackend:
    """Two docs with a `source` in their metadata, as a document loader would give them."""

    async def retrieve(self, query: str) -> list[dict[str, Any]]:
        return [
            {"content": f"RAG is about {query}", "metadata": {"source": "kb/rag.md"}},
            {"content": "BM25 ranks by terms", "metadata": {"source": "kb/bm25.md"}},
        ]


async def open_tab(context: Any, url: str, errors: list[str]) -> Any:
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    return page


async def shows(page: Any, text: str) -> None:
    """Wait until the page's answer reads exactly `text`."""
    await page.wait_for_function(
        f"document.getElementById('answer').textContent === {json.dumps(text)}",
        timeout=WAIT_MS,
    )


async def ended(page: Any, state: str = "done") -> None:
    await page.wait_for_selector(f'#status[data-state="{state}"]', timeout=WAIT_MS)


def job_of(page: Any) -> str:
    return parse_qs(urlsplit(page.url).query)["job"][0]


async def test_the_page_renders_a_whole_answer_with_retrieval_and_timing(
    redis_url, key_prefix, browser
):
    pipeline = StreamingRAG(SourcedBackend(), WordsLLM())
    errors: list[str] = []
    async with web_stack(redis_url, key_prefix, pipeline=pipeline) as stack:
        context = await browser.new_context()
        page = await open_tab(context, stack.url(f"{MOUNT}/"), errors)
        await page.fill("#query", "What is RAG?")
        await page.click("#submit")
        await ended(page)
        job_id = job_of(page)  # the page put the job in its URL (shareable)
        trace = [e async for e in stack.rag.aevents(job_id)]
        assert await page.text_content("#answer") == ANSWER
        assert await page.text_content("#num-docs") == "2"
        assert await page.locator("#sources li").all_text_contents() == [
            "kb/rag.md",
            "kb/bm25.md",
        ]
        total = trace[-1].data["total_latency"]
        assert await page.text_content("#t-total") == f"{total:.3f}"
        first_chunk = next(e for e in trace if e.is_chunk)
        assert await page.text_content("#t-first-chunk") == f"{first_chunk.latency:.3f}"
        assert await page.text_content("#n-chunks") == str(len(ANSWER_WORDS))
        await context.close()
    assert errors == []


async def test_two_tabs_watching_one_job_show_the_same_answer(redis_url, key_prefix, browser):
    llm = GatedLLM()
    errors: list[str] = []
    async with web_stack(redis_url, key_prefix, llm) as stack:
        context = await browser.new_context()
        first = await open_tab(context, stack.url(f"{MOUNT}/"), errors)
        await first.fill("#query", "Shared answer?")
        await first.click("#submit")
        await shows(first, "t0 t1 ")  # the job now stalls mid-answer
        second = await open_tab(context, stack.url(f"{MOUNT}/?job={job_of(first)}"), errors)
        await shows(second, "t0 t1 ")  # replayed from the start, then following live
        assert llm.release is not None
        llm.release.set()
        for page in (first, second):
            await ended(page)
        answers = [await page.text_content("#answer") for page in (first, second)]
        await context.close()
    assert answers == ["t0 t1 end", "t0 t1 end"]
    assert errors == []
