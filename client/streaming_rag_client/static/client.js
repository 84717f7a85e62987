// streaming-rag browser client: an ES module served by the HTTP bridge at GET <bridge>/client.js.
//
//   import {watch, submit} from "/rag/client.js";
//   const job = await submit("What is RAG?");
//   watch(job.events_url, {
//     onEvent: (type, data, id, latency) => console.log(type, data),
//     onDone: (last) => console.log("ended with", last.type),
//   });
//
// No dependencies; the bridge serves it, nothing is fetched from elsewhere.

/** The event types the bridge sends (`event:` field); the last two end a job's stream. */
export const EVENT_TYPES = Object.freeze([
  "retrieval_start", "retrieval_done", "generation_start", "chunk", "generation_done", "error",
]);
export const TERMINAL = Object.freeze(["generation_done", "error"]);

// By default the bridge this module was loaded from: <bridge>/client.js -> <bridge>/
const HERE = new URL(".", import.meta.url);

function baseUrl(base) {
  if (base === undefined || base === null || base === "") return HERE;
  const url = new URL(String(base), location.href);
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  return url;
}

function withParams(url, params) {
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  return url.href;
}

/**
 * Follow a job's events. `target` is the `events_url` `submit()` returned, or a job id (then
 * the URL is `<base>/answers/<id>/events`; `base` defaults to the bridge serving this module).
 * Options: `onEvent(type, data, id, latency)` for every event; `onDone(last)` once, after the
 * terminal event (`generation_done` or `error`; `last` is `{type, data, id, latency}`), when the
 * EventSource is already closed; `onError({reconnecting})` on a lost connection:
 * `reconnecting: true` while the browser retries by itself (it resumes with Last-Event-ID:
 * nothing missed, nothing twice), `false` when the stream was refused for good (unknown job,
 * no or bad token, or 204: nothing after `after`) and is closed — fetch the status URL to
 * tell which; `onOpen()` whenever the stream (re)connects; `token` a capability token (added
 * as `?token=` unless the URL has one); `after` an entry id to resume after (`?after=`).
 * Returns a handle: `.lastEventId` (the id of the last event received, else `after` or ""),
 * `.readyState`, `.source` (the EventSource) and `.close()`.
 */
export function watch(target, options = {}) {
  const {onEvent, onDone, onError, onOpen, base, token, after} = options;
  const text = String(target);
  const url = /^[A-Za-z0-9._-]{1,128}$/.test(text)  // a job id (a URL has a "/")
    ? new URL("answers/" + encodeURIComponent(text) + "/events", baseUrl(base))
    : new URL(text, baseUrl(base));
  const params = {after};
  if (token && !url.searchParams.has("token")) params.token = token;
  const source = new EventSource(withParams(url, params));
  let lastEventId = after ? String(after) : "";
  let done = false;
  const close = () => { done = true; source.close(); };

  source.addEventListener("open", () => { if (!done && onOpen) onOpen(); });
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (event) => {
      if (done) return;
      if (!(event instanceof MessageEvent)) {  // the connection's own "error", not an event
        const reconnecting = source.readyState !== EventSource.CLOSED;
        if (!reconnecting) close();  // refused: the browser will not retry
        if (onError) onError({reconnecting, type: "connection"});
        return;
      }
      const message = JSON.parse(event.data);
      if (event.lastEventId) lastEventId = event.lastEventId;
      const last = {type, data: message.data, id: event.lastEventId, latency: message.latency};
      const terminal = TERMINAL.includes(type);
      if (terminal) close();  // no reconnect after the end
      try {
        if (onEvent) onEvent(type, last.data, last.id, last.latency);
      } finally {
        if (terminal && onDone) onDone(last);
      }
    });
  }
  return {
    get lastEventId() { return lastEventId; },
    get readyState() { return source.readyState; },
    source,
    close,
  };
}

/**
 * Ask a question: POST `<base>/answers` `{query, context}` (`token` added as `?token=`, for
 * an `authorize` check of your own). Resolves to the reply (`job_id`, `events_url`,
 * `status_url`, `cancel_url`, `watch_url`, and the tokens with a secret); on a non-2xx answer
 * throws an Error whose message is the server's `detail`, with `.status`, `.detail`, `.body`.
 * A network failure rejects as `fetch` does (a TypeError, no `.status`).
 */
export async function submit(query, options = {}) {
  const {context, base, token} = options;
  const url = withParams(new URL("answers", baseUrl(base)), {token});
  const body = context === undefined ? {query} : {query, context};
  const response = await fetch(url, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body),
  });
  const reply = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = reply && reply.detail ? String(reply.detail) : "";
    const error = new Error(detail || "HTTP " + response.status);
    error.status = response.status;
    error.detail = detail;
    error.body = reply;
    throw error;
  }
  return reply;
}
