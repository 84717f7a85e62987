"""Django in one file over the sync client: submit a question, stream its answer as SSE.

    REDIS_URL=redis://127.0.0.1:6379/0 python app.py runserver 127.0.0.1:8000

POST /answers {"query": "..."} -> 202 {"job_id", "events_url"}
GET /answers/<job_id>/events -> text/event-stream, resumes after Last-Event-ID or ?after=
"""

from __future__ import annotations

import json
import os
import sys

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST

from streaming_rag_client import InvalidRequest, JobNotFound, StreamingRAGClient
from streaming_rag_client.sse import SSE_HEADERS, open_event_stream

settings.configure(
    DEBUG=os.environ.get("DJANGO_DEBUG") == "1",
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret"),
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],  # a JSON API without cookies: no sessions, no CSRF
)
# REDIS_URL is read by the client; one client (a thread-safe pool) serves every request
rag = StreamingRAGClient(prefix=os.environ.get("STREAMING_RAG_PREFIX") or "srag")


@require_POST
def submit(request: HttpRequest) -> HttpResponse:
    try:
        data = json.loads(request.body or b"{}")
        job_id = rag.submit(data.get("query") if isinstance(data, dict) else None)
    except (ValueError, InvalidRequest) as exc:  # bad JSON or a query the client refuses
        return JsonResponse({"detail": str(exc)}, status=422)
    events_url = reverse("events", kwargs={"job_id": job_id})
    return JsonResponse({"job_id": job_id, "events_url": events_url}, status=202)


@require_GET
def events(request: HttpRequest, job_id: str) -> HttpResponse:
    try:
        body = open_event_stream(
            rag,
            job_id,
            last_event_id=request.headers.get("Last-Event-ID"),
            after=request.GET.get("after"),
        )
    except InvalidRequest as exc:
        return JsonResponse({"detail": str(exc)}, status=422)
    except JobNotFound as exc:
        return JsonResponse({"detail": str(exc)}, status=404)
    if body is None:  # resumed at or after the terminal event: nothing left, EventSource stops
        return HttpResponse(status=204)
    return StreamingHttpResponse(body, content_type="text/event-stream", headers=SSE_HEADERS)


urlpatterns = [
    path("answers", submit),
    path("answers/<str:job_id>/events", events, name="events"),
]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
