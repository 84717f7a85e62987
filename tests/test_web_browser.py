"""The bridge's page in a real headless Chromium (Debian's `chromium`, driven by Playwright),
against real uvicorn and a real worker: it renders a job's whole answer live (Markdown, escaped)
with retrieval and timing beside it (below it on a phone), shares it by a watch link, stops a
running job, clears a stale answer when a question is rejected, and rides through a cut
connection without losing or repeating a chunk. At 390 px (a phone) and 1280 px (a desktop);
one screenshot per viewport is saved under `screenshot_dir()` (printed).

Skipped (with the reason printed) only when Playwright or /usr/bin/chromium is not installed;
Playwright's own browsers are never used."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from streaming_rag import StreamingRAG
from tests.faults import TcpProxy
from tests.helpers_web import MOUNT, WAIT_S, web_stack
from tests.queue_apps import ANSWER_WORDS, Backend, GatedLLM, WordsLLM

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
PAGE_HTML = Path(__file__).resolve().parents[1] / "client/streaming_rag_client/static/index.html"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
VIEWPORTS = [pytest.param(PHONE, id="390px"), pytest.param(DESKTOP, id="1280px")]


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


def screenshot_dir() -> Path:
    """`$ARTIFACTS_DIR/screenshots` when that is set, else `.artifacts/screenshots` in the
    repository (gitignored)."""
    root = os.environ.get("ARTIFACTS_DIR")
    base = Path(root) if root else Path(__file__).resolve().parents[1] / ".artifacts"
    folder = base / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
    """Docs as a document loader gives them: one with a title, one with only a path."""

    async def retrieve(self, query: str) -> list[dict[str, Any]]:
        return [
            {
                "content": f"RAG is about {query}",
                "metadata": {"source": "kb/rag.md", "title": "RAG notes"},
            },
            {"content": "BM25 ranks by terms", "metadata": {"source": "/srv/kb/bm25.md"}},
        ]


class ChunksLLM:
    """Yields exactly `chunks`."""

    def __init__(self, chunks: list[str]) -> None:
        self.chunks = chunks

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        for chunk in self.chunks:
            yield chunk


# every EventSource the page opens, so a test can tell that the page closed them
TRACK_EVENT_SOURCES = """
window.eventSources = [];
window.EventSource = class extends EventSource {
  constructor(...args) { super(...args); window.eventSources.push(this); }
};
"""


async def open_tab(context: Any, url: str, errors: list[str]) -> Any:
    page = await context.new_page()
    await page.add_init_script(TRACK_EVENT_SOURCES)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
    await page.goto(url)
    return page


async def ask(page: Any, query: str) -> None:
    await page.fill("#query", query)
    await page.click("#submit", timeout=5000)  # actionable: visible, enabled, not covered


async def shows(page: Any, text: str) -> None:
    """Wait until the page's answer (its Markdown source, chunks joined) is exactly `text`."""
    await page.wait_for_function(
        f"document.getElementById('answer-source').textContent === {json.dumps(text)}",
        timeout=WAIT_MS,
    )


async def ended(page: Any, state: str = "done") -> None:
    """Wait for the page to show the job ended in `state`; by then it closed its EventSource
    (no reconnect loop after the terminal event)."""
    await page.wait_for_selector(f'#status[data-state="{state}"]', timeout=WAIT_MS)
    assert await page.evaluate("eventSources.every((s) => s.readyState === EventSource.CLOSED)")


def job_of(page: Any) -> str:
    return parse_qs(urlsplit(page.url).query)["job"][0]


async def box(page: Any, selector: str) -> dict[str, float]:
    found = await page.locator(selector).bounding_box()
    assert found is not None, f"{selector} is not rendered"
    return dict(found)


@pytest.mark.parametrize("viewport", VIEWPORTS)
async def test_the_page_renders_a_whole_answer_with_retrieval_and_timing(
    redis_url, key_prefix, browser, viewport
):
    pipeline = StreamingRAG(SourcedBackend(), WordsLLM())
    errors: list[str] = []
    async with web_stack(redis_url, key_prefix, pipeline=pipeline) as stack:
        context = await browser.new_context(viewport=viewport)
        page = await open_tab(context, stack.url(f"{MOUNT}/"), errors)
        assert await page.locator("#stop").is_hidden()  # nothing is running
        await page.click("#submit", trial=True, timeout=5000)  # not covered by the panels
        await ask(page, "What is RAG?")
        await ended(page)
        job_id = job_of(page)  # the page put the job in its URL (shareable)
        trace = [e async for e in stack.rag.aevents(job_id)]
        assert await page.text_content("#answer-source") == ANSWER
        assert await page.text_content("#answer") == ANSWER.strip()  # one Markdown paragraph
        assert await page.text_content("#num-docs") == "2"
        # by title, else the file name: never a directory
        assert await page.locator("#sources li").all_text_contents() == ["RAG notes", "bm25.md"]
        total = trace[-1].data["total_latency"]
        assert await page.text_content("#t-total") == f"{total:.3f}"
        first_chunk = next(e for e in trace if e.is_chunk)
        assert await page.text_content("#t-first-chunk") == f"{first_chunk.latency:.3f}"
        assert await page.text_content("#n-chunks") == str(len(ANSWER_WORDS))
        assert await page.locator("#stop").is_hidden()  # not running any more
        # the server counts watchers: the page shows the count it last read
        await page.locator("#watchers").wait_for(state="visible", timeout=5000)
        assert re.fullmatch(r"\u00b7 \d+ watchers?", await page.text_content("#watchers") or "")
        link = await page.get_attribute("#watch-link", "href")
        assert link == await page.text_content("#watch-link") == page.url

        # the layout: the answer gets the width, words flow on lines, nothing scrolls sideways
        answer, panels = await box(page, "#answer"), await box(page, "aside")
        assert answer["width"] >= 300
        lines = await page.evaluate(
            """() => { const range = document.createRange();
                       range.selectNodeContents(document.querySelector('#answer p'));
                       return new Set([...range.getClientRects()].map(r => r.top)).size; }"""
        )
        assert lines <= 2, f"{len(ANSWER_WORDS)} short words on {lines} lines"
        assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")
        if viewport["width"] < 700:  # one column: retrieval and timing below the answer
            assert panels["y"] >= answer["y"] + answer["height"]
        else:  # beside it
            assert panels["x"] >= answer["x"] + answer["width"]
        shot = screenshot_dir() / f"page-{viewport['width']}px.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")

        # the watch link opens the same answer elsewhere (another device: a fresh context)
        other = await browser.new_context(viewport=viewport)
        second = await open_tab(other, link, errors)
        await ended(second)
        assert await second.text_content("#answer-source") == ANSWER
        assert await second.locator("#sources li").all_text_contents() == ["RAG notes", "bm25.md"]
        await other.close()
        await context.close()
    assert errors == []


async def test_two_tabs_watching_one_job_show_the_same_answer(redis_url, key_prefix, browser):
    llm = GatedLLM()
    errors: list[str] = []
    async with web_stack(redis_url, key_prefix, llm) as stack:
        context = await browser.new_context(viewport=PHONE)
        first = await open_tab(context, stack.url(f"{MOUNT}/"), errors)
        await ask(first, "Shared answer?")
        await shows(first, "t0 t1 ")  # the job now stalls mid-answer
        link = await first.get_attribute("#watch-link", "href")
        assert link == stack.url(f"{MOUNT}/?job={job_of(first)}")
        second = await open_tab(context, link, errors)
        await shows(second, "t0 t1 ")  # replayed from the start, then following live
        assert await second.locator("#stop").is_visible()
        assert llm.release is not None
        llm.release.set()
        for page in (first, second):
            await ended(page)
        answers = [await page.text_content("#answer-source") for page in (first, second)]
        await context.close()
    assert answers == ["t0 t1 end", "t0 t1 end"]
    assert errors == []


async def test_stop_cancels_a_running_job(redis_url, key_prefix, browser):
    llm = GatedLLM()
    errors: list[str] = []
    async with web_stack(redis_url, key_prefix, llm) as stack:
        context = await browser.new_context(viewport=PHONE)
        page = await open_tab(context, stack.url(f"{MOUNT}/"), errors)
        await ask(page, "Slow answer?")
        await shows(page, "t0 t1 ")  # stalled until released: still running
        await page.click("#stop", timeout=5000)
        await ended(page, "cancelled")
        assert await page.locator("#stop").is_hidden()
        assert await page.locator("#problem").is_hidden()  # a cancellation is not an error
        assert await page.text_content("#answer-source") == "t0 t1 "
        status = await stack.http.get(f"/answers/{job_of(page)}")
        assert status.json()["status"] == "cancelled"
        await context.close()
    assert errors == []


async def test_a_rejected_question_clears_the_previous_answer(redis_url, key_prefix, browser):
    errors: list[str] = []
    async with web_stack(
        redis_url, key_prefix, pipeline=StreamingRAG(SourcedBackend(), WordsLLM())
    ) as stack:
        context = await browser.new_context(viewport=DESKTOP)
        page = await open_tab(context, stack.url(f"{MOUNT}/"), errors)
        await ask(page, "What is RAG?")
        await ended(page)
        await ask(page, "")  # the server's rules decide: an empty question is refused
        await ended(page, "rejected")
        assert (await page.text_content("#problem") or "").strip()
        assert await page.locator("#problem").is_visible()
        for selector in ("#answer", "#answer-source", "#sources"):
            assert await page.text_content(selector) == "", selector
        for selector in ("#num-docs", "#t-total", "#t-first-chunk"):
            assert await page.text_content(selector) == "\u2013", selector
        assert await page.text_content("#n-chunks") == "0"
        assert await page.locator("#share").is_hidden()  # no watch link of the old job
        assert "job=" not in page.url
        await ask(page, "And again?")  # and a good question after it shows no stale error
        await ended(page)
        assert await page.locator("#problem").is_hidden()
        assert await page.text_content("#answer-source") == ANSWER
        await context.close()
    assert errors == []


async def test_with_a_secret_the_page_uses_the_links_it_was_given(redis_url, key_prefix, browser):
    """Capability links: the submitter's page follows and stops the job with the URLs the
    POST returned; its watch link (a watch token) shows the answer elsewhere but offers no
    Stop; the bare `?job=` link is refused, and the page says why."""
    llm = GatedLLM()
    errors: list[str] = []
    async with web_stack(redis_url, key_prefix, llm, secret="s" * 32) as stack:
        context = await browser.new_context(viewport=PHONE)
        page = await open_tab(context, stack.url(f"{MOUNT}/"), errors)
        await ask(page, "Secret answer?")
        await shows(page, "t0 t1 ")
        job_id = job_of(page)
        link = await page.get_attribute("#watch-link", "href")
        assert link == page.url and parse_qs(urlsplit(link).query)["token"]
        other = await browser.new_context(viewport=DESKTOP)  # another device
        watcher = await open_tab(other, link, errors)
        await shows(watcher, "t0 t1 ")
        assert await watcher.locator("#stop").is_hidden()  # a watch token cannot cancel
        stranger = await open_tab(other, stack.url(f"{MOUNT}/?job={job_id}"), errors)
        await ended(stranger, "error")
        await stranger.wait_for_function(
            "document.getElementById('problem').textContent.includes('token')", timeout=WAIT_MS
        )
        assert await stranger.text_content("#answer-source") == ""
        await page.click("#stop", timeout=5000)  # the submitter's cancel URL
        for each in (page, watcher):
            await ended(each, "cancelled")
            assert await each.text_content("#answer-source") == "t0 t1 "
        await other.close()
        await context.close()
    assert errors == []


async def test_an_unknown_job_is_reported(redis_url, key_prefix, browser):
    errors: list[str] = []
    async with web_stack(redis_url, key_prefix) as stack:
        context = await browser.new_context(viewport=PHONE)
        page = await open_tab(context, stack.url(f"{MOUNT}/?job=no-such-job"), errors)
        await ended(page, "error")
        await page.wait_for_function(
            "document.getElementById('problem').textContent.includes('no-such-job')",
            timeout=WAIT_MS,
        )
        assert await page.locator("#stop").is_hidden()
        await context.close()
    assert errors == []


async def test_html_in_the_answer_is_shown_as_text(redis_url, key_prefix, browser):
    chunks = [
        "# Title\n\nSome **bold** and *italic*",
        " with `x<y>`.\n\n<im",  # a tag split across chunks is escaped all the same
        "g src=x onerror=alert(1)>\n\n- one\n- two\n\n",
        "```\n<script>alert(2)</script>\n```\n",
    ]
    errors: list[str] = []
    pipeline = StreamingRAG(Backend(), ChunksLLM(chunks))
    async with web_stack(redis_url, key_prefix, pipeline=pipeline) as stack:
        context = await browser.new_context(viewport=DESKTOP)
        page = await open_tab(context, stack.url(f"{MOUNT}/"), errors)
        await ask(page, "Inject?")
        await ended(page)
        answer = page.locator("#answer")
        assert await page.text_content("#answer-source") == "".join(chunks)
        assert await answer.locator("img, script, [onerror]").count() == 0
        assert "<img src=x onerror=alert(1)>" in (await answer.text_content() or "")
        assert await answer.locator("h3").all_text_contents() == ["Title"]
        assert await answer.locator("strong").all_text_contents() == ["bold"]
        assert await answer.locator("em").all_text_contents() == ["italic"]
        assert await answer.locator("p > code").all_text_contents() == ["x<y>"]
        assert await answer.locator("li").all_text_contents() == ["one", "two"]
        assert await answer.locator("pre code").all_text_contents() == ["<script>alert(2)</script>"]
        await context.close()
    assert errors == []  # no alert() dialog, no script error


MARKDOWN_CASES = [
    ("plain", "<p>plain</p>"),
    ("a\nb\n\nc", "<p>a<br>b</p><p>c</p>"),
    ("**b** *i* `c`", "<p><strong>b</strong> <em>i</em> <code>c</code></p>"),
    ("`**not bold**`", "<p><code>**not bold**</code></p>"),
    ("2 * 3 * 4", "<p>2 * 3 * 4</p>"),
    ("## Head", "<h4>Head</h4>"),
    ("- a\n- b\n\n1. x\n2. y", "<ul><li>a</li><li>b</li></ul><ol><li>x</li><li>y</li></ol>"),
    ("3. c", '<ol start="3"><li>c</li></ol>'),
    ("```py\nif a < b:\n    pass\n```", "<pre><code>if a &lt; b:\n    pass</code></pre>"),
    ("```\nstill streaming", "<pre><code>still streaming</code></pre>"),
    ('<a href="javascript:x">y</a>', "<p>&lt;a href=&quot;javascript:x&quot;&gt;y&lt;/a&gt;</p>"),
    ("[link](javascript:alert(1))", "<p>[link](javascript:alert(1))</p>"),
    ("**<b>x</b>**", "<p><strong>&lt;b&gt;x&lt;/b&gt;</strong></p>"),
    ("&amp; 'q'", "<p>&amp;amp; &#39;q&#39;</p>"),
]


async def test_the_markdown_renderer_escapes_first(browser):
    """The page's `markdown()` on its own (the page loaded from the file: no server)."""
    page = await browser.new_page()
    await page.set_content(PAGE_HTML.read_text(encoding="utf-8"))
    cases = [source for source, _ in MARKDOWN_CASES]
    rendered = await page.evaluate("(cases) => cases.map(markdown)", cases)
    assert dict(zip(cases, rendered, strict=True)) == dict(MARKDOWN_CASES)
    await page.close()


async def test_the_page_resumes_after_a_cut_connection(redis_url, key_prefix, browser):
    """A proxy between the browser and uvicorn drops every connection mid-answer: the page's
    EventSource reconnects with Last-Event-ID and ends with the exact answer."""
    llm = GatedLLM()
    errors: list[str] = []
    async with web_stack(redis_url, key_prefix, llm) as stack:
        with TcpProxy(int(urlsplit(stack.origin).port or 0)) as proxy:
            context = await browser.new_context(viewport=PHONE)
            page = await open_tab(context, f"http://127.0.0.1:{proxy.port}{MOUNT}/", errors)
            streams: list[Any] = []
            page.on("request", lambda r: streams.append(r) if "/events" in r.url else None)
            await ask(page, "Cut me off?")
            await shows(page, "t0 t1 ")
            job_id = job_of(page)
            async with page.expect_request(lambda r: "/events" in r.url, timeout=WAIT_MS):
                assert proxy.cut() >= 1  # the event stream and any idle keep-alive connection
            assert llm.release is not None
            llm.release.set()  # the rest is written while the page reconnects
            await ended(page)
            assert await page.text_content("#answer-source") == "t0 t1 end"
            assert await page.text_content("#n-chunks") == "3"
            trace = [e async for e in stack.rag.aevents(job_id)]
            last_seen = [e for e in trace if e.is_chunk][1].id  # "t1 ": the last before the cut
            assert len(streams) == 2  # the first, and one resumed stream: no reconnect loop
            assert "last-event-id" not in await streams[0].all_headers()
            assert (await streams[1].all_headers())["last-event-id"] == last_seen
            await context.close()
    assert errors == []


# A front end of someone else's: a page on the same origin (outside the bridge's mount) that
# imports the bridge's client.js; `run(query)` submits and follows the job to its end.
HARNESS_PATH = "/harness.html"
HARNESS = f"""<!doctype html><html><head><title>client.js harness</title></head><body>
<script type="module">
import {{watch, submit}} from "{MOUNT}/client.js";
const follow = (target, options) => new Promise((resolve) => {{
  const events = [];
  const handle = watch(target, {{
    ...options,
    onEvent: (type, data, id, latency) => events.push({{type, data, id, latency}}),
    onDone: (last) => resolve({{events, last, lastEventId: handle.lastEventId,
                                closed: handle.readyState === EventSource.CLOSED}}),
    onError: ({{reconnecting}}) => {{
      if (!reconnecting) resolve({{events, refused: true, lastEventId: handle.lastEventId,
                                   closed: handle.readyState === EventSource.CLOSED}});
    }},
  }});
}});
window.run = async (query) => {{
  const reply = await submit(query);
  return {{reply, ...(await follow(reply.events_url, {{}}))}};
}};
window.follow = follow;
window.submit = submit;
window.rejection = (query) => submit(query).then(
  () => null, (exc) => ({{message: exc.message, status: exc.status, detail: exc.detail}}));
window.harnessReady = true;
</script></body></html>"""


async def open_harness(context: Any, origin: str, errors: list[str]) -> Any:
    page = await context.new_page()
    await page.add_init_script(TRACK_EVENT_SOURCES)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    async def fulfil(route: Any) -> None:
        await route.fulfill(body=HARNESS, content_type="text/html")

    await page.route(origin + HARNESS_PATH, fulfil)
    await page.goto(origin + HARNESS_PATH)
    await page.wait_for_function("window.harnessReady === true", timeout=WAIT_MS)
    return page


async def test_client_js_follows_a_job_to_its_end_and_closes(redis_url, key_prefix, browser):
    """`watch()` and `submit()` from GET /client.js, on a page of another path: every event
    once, one terminal event, then the EventSource closed (no reconnect even with a 20 ms
    `retry:`), `.lastEventId` the terminal event's id; resuming by job id `after` an entry;
    `after` the end is refused (204); a rejected question throws the server's detail."""
    errors: list[str] = []
    pipeline = StreamingRAG(SourcedBackend(), WordsLLM())
    async with web_stack(redis_url, key_prefix, pipeline=pipeline, retry_ms=20) as stack:
        context = await browser.new_context(viewport=DESKTOP)
        page = await open_harness(context, stack.origin, errors)
        streams: list[str] = []
        page.on("request", lambda r: streams.append(r.url) if "/events" in r.url else None)

        result = await page.evaluate("run('What is RAG?')")
        job_id = result["reply"]["job_id"]
        trace = [e async for e in stack.rag.aevents(job_id)]
        got = [(e["type"], e["data"], e["id"], e["latency"]) for e in result["events"]]
        assert got == [(e.type.value, e.data, e.id, e.latency) for e in trace]
        terminal = [e for e in result["events"] if e["type"] in ("generation_done", "error")]
        assert [e["type"] for e in terminal] == ["generation_done"]
        assert result["last"] == result["events"][-1] == terminal[0]
        assert result["lastEventId"] == trace[-1].id
        assert result["closed"]
        assert await page.evaluate("eventSources.every((s) => s.readyState === EventSource.CLOSED)")

        # by job id (the URL from client.js's own location), resuming after the second event
        resumed = await page.evaluate("([id, after]) => follow(id, {after})", [job_id, trace[1].id])
        assert [e["id"] for e in resumed["events"]] == [e.id for e in trace[2:]]
        assert resumed["lastEventId"] == trace[-1].id and resumed["closed"]
        # after the terminal event: 204, refused for good, nothing delivered
        past = await page.evaluate("([id, after]) => follow(id, {after})", [job_id, trace[-1].id])
        assert past["refused"] and past["closed"] and past["events"] == []
        assert past["lastEventId"] == trace[-1].id
        # the server's detail, as the bridge answers it
        refused = await stack.http.post("/answers", json={"query": ""})
        assert refused.status_code == 422
        rejection = await page.evaluate("rejection('')")
        detail = refused.json()["detail"]
        assert rejection == {"message": detail, "status": 422, "detail": detail}
        # one request per follow(): no reconnect after any end (the last 204 ends it too)
        assert streams == [
            stack.url(result["reply"]["events_url"]),
            stack.url(f"{MOUNT}/answers/{job_id}/events?after={trace[1].id}"),
            stack.url(f"{MOUNT}/answers/{job_id}/events?after={trace[-1].id}"),
        ]
        await context.close()
    assert errors == []


async def test_client_js_passes_a_capability_token(redis_url, key_prefix, browser):
    """With a secret: `watch(jobId, {token})` with the watch token `submit()` returned."""
    errors: list[str] = []
    async with web_stack(redis_url, key_prefix, secret="s" * 32) as stack:
        context = await browser.new_context(viewport=DESKTOP)
        page = await open_harness(context, stack.origin, errors)
        reply = await page.evaluate("submit('Token?')")
        assert reply["watch_token"]
        followed = await page.evaluate(
            "([id, token]) => follow(id, {token})", [reply["job_id"], reply["watch_token"]]
        )
        assert followed["last"]["type"] == "generation_done" and followed["closed"]
        bare = await page.evaluate("(id) => follow(id, {})", reply["job_id"])
        assert bare["refused"] and bare["closed"] and bare["events"] == []
        await context.close()
    assert errors == []
