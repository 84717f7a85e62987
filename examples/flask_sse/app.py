"""Flask over the sync client: submit a question, stream its answer as server-sent events.

    REDIS_URL=redis://127.0.0.1:6379/0 flask --app app run

POST /answers {"query": "..."} -> 202 {"job_id", "events_url"}
GET /answers/<job_id>/events -> text/event-stream, resumes after Last-Event-ID or ?after=
"""

from __future__ import annotations

import os

from flask import Flask, Response, request, stream_with_context, url_for

from streaming_rag_client import InvalidRequest, JobNotFound, StreamingRAGClient
from streaming_rag_client.sse import SSE_HEADERS, open_event_stream

app = Flask(__name__)
# REDIS_URL is read by the client; one client (a thread-safe pool) serves every request
rag = StreamingRAGClient(prefix=os.environ.get("STREAMING_RAG_PREFIX") or "srag")


@app.errorhandler(InvalidRequest)
def invalid(exc: InvalidRequest) -> tuple[dict[str, str], int]:
    return {"detail": str(exc)}, 422


@app.errorhandler(JobNotFound)
def not_found(exc: JobNotFound) -> tuple[dict[str, str], int]:
    return {"detail": str(exc)}, 404


@app.post("/answers")
def submit() -> tuple[dict[str, str], int]:
    data = request.get_json(force=True, silent=True) or {}
    job_id = rag.submit(data.get("query"))
    return {"job_id": job_id, "events_url": url_for("events", job_id=job_id)}, 202


@app.get("/answers/<job_id>/events")
def events(job_id: str) -> Response:
    body = open_event_stream(
        rag,
        job_id,
        last_event_id=request.headers.get("Last-Event-ID"),
        after=request.args.get("after"),
    )
    if body is None:  # resumed at or after the terminal event: nothing left, EventSource stops
        return Response(status=204)
    return Response(stream_with_context(body), mimetype="text/event-stream", headers=SSE_HEADERS)
