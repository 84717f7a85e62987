"""Turning whatever a retriever returns into `docs: list[dict]`, and docs into a context block.

Normalisation rule (`normalize_docs`), applied to the value `rag_system.retrieve()` returns:

- `None` → `[]`.
- A single item (not a list/tuple/other iterable) → a list of that one item, normalised.
- A list, tuple or other iterable (not `str`, `bytes` or a mapping) → each item normalised:
  - `str` → `{"content": s}`; `bytes` → `{"content": s.decode("utf-8", "replace")}`;
  - a mapping → `dict(item)`, keys as they are;
  - an object with a `page_content`, `content` or `text` attribute (LangChain and
    LlamaIndex documents, most vector-store hits) → a dict holding the first of those
    attributes under its own name, plus `metadata` when the object has it;
  - anything else → `{"content": str(item)}`.

`num_docs` is the length of that list before any truncation. The context block uses the first
`max_context_docs` docs; each doc's text (its `content`, `page_content` or `text` value, first
found; otherwise the whole dict as text) is cut to `max_doc_chars` characters, and the docs are
joined with a blank line between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["TEXT_KEYS", "build_context", "doc_text", "normalize_docs"]

#: Attribute / key names read as a document's text, in order of preference.
TEXT_KEYS = ("page_content", "content", "text")


def _normalize_one(item: Any) -> dict[str, Any]:
    if isinstance(item, str):
        return {"content": item}
    if isinstance(item, bytes | bytearray):
        return {"content": bytes(item).decode("utf-8", "replace")}
    if isinstance(item, Mapping):
        return dict(item)
    for key in TEXT_KEYS:
        value = getattr(item, key, None)
        if value is not None:
            doc: dict[str, Any] = {key: value}
            metadata = getattr(item, "metadata", None)
            if metadata is not None:
                doc["metadata"] = metadata
            return doc
    return {"content": str(item)}


def normalize_docs(raw: Any) -> list[dict[str, Any]]:
    """Return the retriever's result as a list of dicts (see the module docstring)."""
    if raw is None:
        return []
    if isinstance(raw, str | bytes | bytearray | Mapping) or not isinstance(raw, Iterable):
        return [_normalize_one(raw)]
    if any(getattr(raw, key, None) is not None for key in TEXT_KEYS):
        return [_normalize_one(raw)]  # an iterable document object is still one document
    return [_normalize_one(item) for item in raw]


def doc_text(doc: Mapping[str, Any]) -> str:
    """The text a doc contributes to the prompt: its first text key, else the dict itself."""
    for key in ("content", "page_content", "text"):
        value = doc.get(key)
        if value is not None:
            return value if isinstance(value, str) else str(value)
    return str(dict(doc))


def build_context(docs: list[dict[str, Any]], *, max_docs: int, max_chars: int) -> str:
    """Join the first `max_docs` docs' texts, each cut to `max_chars`, with blank lines."""
    return "\n\n".join(doc_text(doc)[:max_chars] for doc in docs[:max_docs])
