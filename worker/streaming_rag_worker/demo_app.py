"""A self-contained demo pipeline: a pure-Python BM25 retriever and an extractive answerer.

Nothing here needs a network, a model or an API key, so ``streaming-rag demo`` and
``streaming-rag worker --app streaming_rag_worker.demo_app:demo_app`` work right after
``pip install``.

- `BM25Retriever(docs)` ranks documents (strings, or mappings with a ``content`` and an optional
  ``metadata``) against a keyword query with Okapi BM25 (``k1=1.5``, ``b=0.75``). Tokens are
  lower-cased runs of letters and digits, minus English stop words, with a light suffix
  stemmer (``streams``/``streaming`` → ``stream``). `retrieve(query, k=4)` returns at most `k`
  dicts ``{"content": str, "metadata": {"source": str, "title": str, "score": float, ...}}``,
  best first (ties: corpus order), and only documents sharing a term with the query: an empty
  list when nothing matches. `BM25Retriever.from_folder(path)` loads every ``*.md`` and
  ``*.txt`` file of a folder (not recursive, sorted by name; ``source`` is the file name).
- `ExtractiveRAG(retriever)` is a RAG backend for `StreamingRAG`'s simulation strategy:
  `retrieve(query)` returns the retriever's top `k` docs; `generate(query, context)` answers
  with the best-matching sentences of those docs, in reading order (document rank, then
  position in the document), followed by a ``Sources:`` line, or with `NO_INFORMATION` when
  nothing was retrieved. A sentence's weight is the summed inverse document frequency of the
  query terms it contains, times its document's BM25 score relative to the best document's;
  the answer keeps at most `max_sentences` sentences weighing at least `min_share` of the best
  one (a lone sentence is followed by the next sentence of its document). It is deterministic
  and keeps no state between calls, so one instance serves any number of concurrent jobs.
- Factories for ``--app``: `demo_app()` over the bundled corpus (a few short notes on RAG,
  token streaming, Redis Streams, job queues, BM25 and Valkey), `folder_app()` over the folder
  named by the env variable ``STREAMING_RAG_DOCS``.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from streaming_rag import StreamConfig, StreamingRAG
from streaming_rag.exceptions import WorkerConfigError

__all__ = [
    "CORPUS_DIR",
    "DOCS_ENV",
    "NO_INFORMATION",
    "SAMPLE_QUESTION",
    "BM25Retriever",
    "ExtractiveRAG",
    "demo_app",
    "folder_app",
    "split_sentences",
    "tokenize",
]

#: The bundled corpus (package data of `streaming_rag_worker`).
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
#: Env variable naming the folder `folder_app()` serves.
DOCS_ENV = "STREAMING_RAG_DOCS"
#: The answer when nothing in the corpus matches the question.
NO_INFORMATION = "I have no information to answer that question in the documents I have."
#: The question `streaming-rag demo` asks when given none.
SAMPLE_QUESTION = "How can a subscriber join a Redis Stream late or resume after a disconnect?"

DOC_SUFFIXES = (".md", ".txt")

_STOP_WORDS_TEXT = """
    a about after all also an and any are as at be because been before being both but by can
    could did do does doing each few for from had has have having how i if in into is it its
    itself just me more most my no nor not of off on once only or other our out over own same
    she should so some such than that the their them then there these they this those through
    to too under until up very was we were what when where which while who whom why will with
    would you your"""
_STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
_TOKEN = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")


def _stem(word: str) -> str:
    """A deliberately tiny suffix stemmer: plural and -ing/-ed endings."""
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if len(word) > 5 and word.endswith("ing"):
        word = word[:-3]
    elif len(word) > 4 and word.endswith("ed"):
        word = word[:-2]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-cased, stemmed letter/digit runs of `text`, stop words removed."""
    return [_stem(t) for t in _TOKEN.findall(text.lower()) if t not in _STOP_WORDS]


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, skipping Markdown heading lines and blank lines.

    A sentence ends at ``.``, ``!`` or ``?`` followed by whitespace and a capital letter, a
    digit, a quote or ``(`` (so "et al. in" stays one sentence).
    """
    body = " ".join(
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return [s.strip() for s in _SENTENCE_END.split(body) if s.strip()]


def _title(text: str, fallback: str) -> str:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip() or fallback
        if stripped:
            break
    return fallback


class BM25Retriever:
    """Okapi BM25 over an in-memory list of documents (see the module docstring).

    `docs` items are strings (``source`` becomes ``doc-<index>``) or mappings with ``content``
    (str) and optional ``metadata`` (mapping, copied). Raises `ValueError` on an item without
    text content. The index is built once here and never changes, so `retrieve` is safe to
    call from many threads at once.
    """

    def __init__(
        self, docs: Iterable[str | Mapping[str, Any]], *, k1: float = 1.5, b: float = 0.75
    ) -> None:
        self.k1 = k1
        self.b = b
        self.docs: list[dict[str, Any]] = []
        for index, item in enumerate(docs):
            if isinstance(item, str):
                content, metadata = item, {}
            elif isinstance(item, Mapping) and isinstance(item.get("content"), str):
                content, metadata = item["content"], dict(item.get("metadata") or {})
            else:
                raise ValueError(
                    f"document {index} must be a str or a mapping with a str 'content', "
                    f"got {type(item).__name__}"
                )
            metadata.setdefault("source", f"doc-{index}")
            metadata.setdefault("title", _title(content, str(metadata["source"])))
            self.docs.append({"content": content, "metadata": metadata})
        self._tfs = [Counter(tokenize(doc["content"])) for doc in self.docs]
        self._lengths = [sum(tf.values()) for tf in self._tfs]
        count = len(self.docs)
        self._avgdl = (sum(self._lengths) / count) if count else 0.0
        df: Counter[str] = Counter()
        for tf in self._tfs:
            df.update(tf.keys())
        self._idf = {term: math.log(1.0 + (count - n + 0.5) / (n + 0.5)) for term, n in df.items()}

    def __len__(self) -> int:
        return len(self.docs)

    def __repr__(self) -> str:
        return f"BM25Retriever({len(self.docs)} docs)"

    @classmethod
    def from_folder(cls, path: str | os.PathLike[str], **kwargs: Any) -> BM25Retriever:
        """Index every ``.md`` / ``.txt`` file directly in `path` (sorted by name, read as
        UTF-8); each doc's metadata: ``source`` (file name), ``title`` (first Markdown heading,
        else the file stem), and nothing else: no server path reaches the events a browser
        shows. Raises `NotADirectoryError` if `path` is not a folder
        and `FileNotFoundError` if it holds no such file."""
        folder = Path(path)
        if not folder.is_dir():
            raise NotADirectoryError(f"{str(folder)!r} is not a folder")
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in DOC_SUFFIXES
        )
        if not files:
            raise FileNotFoundError(f"no .md or .txt files in {str(folder)!r}")
        docs = []
        for file in files:
            text = file.read_text(encoding="utf-8", errors="replace")
            meta = {"source": file.name, "title": _title(text, file.stem)}
            docs.append({"content": text, "metadata": meta})
        return cls(docs, **kwargs)

    def idf(self, term: str) -> float:
        """Inverse document frequency of a (tokenized) term; 0.0 for unknown terms."""
        return self._idf.get(term, 0.0)

    def scores(self, query: str) -> list[float]:
        """The BM25 score of every document for `query`, in corpus order."""
        terms = [t for t in set(tokenize(query)) if t in self._idf]
        result = []
        for tf, length in zip(self._tfs, self._lengths, strict=True):
            norm = self.k1 * (1.0 - self.b + self.b * length / self._avgdl) if self._avgdl else 0
            score = 0.0
            for term in terms:
                freq = tf.get(term, 0)
                if freq:
                    score += self._idf[term] * freq * (self.k1 + 1.0) / (freq + norm)
            result.append(score)
        return result

    def retrieve(self, query: str, k: int = 4) -> list[dict[str, Any]]:
        """At most `k` matching docs, best first, each a fresh dict with ``metadata.score``."""
        ranked = sorted(
            ((score, index) for index, score in enumerate(self.scores(query)) if score > 0),
            key=lambda pair: (-pair[0], pair[1]),
        )
        hits = []
        for score, index in ranked[: max(k, 0)]:
            doc = self.docs[index]
            hits.append(
                {
                    "content": doc["content"],
                    "metadata": {**doc["metadata"], "score": round(score, 4)},
                }
            )
        return hits


class ExtractiveRAG:
    """A RAG backend answering with the best-matching sentences of the retrieved docs.

    `StreamingRAG` calls `retrieve(query)` for its RETRIEVAL_DONE event and, in the simulation
    strategy, `generate(query, context)`; it passes `generate` the caller's `context`, not the
    retrieved docs, so `generate` retrieves again (deterministic, so it sees the same docs).
    `context` is accepted and ignored.
    """

    def __init__(
        self,
        retriever: BM25Retriever,
        *,
        k: int = 4,
        max_sentences: int = 3,
        min_share: float = 0.3,
        cite_sources: bool = True,
    ) -> None:
        if k < 1 or max_sentences < 1:
            raise ValueError(f"k and max_sentences must be >= 1, got {k} and {max_sentences}")
        self.retriever = retriever
        self.k = k
        self.max_sentences = max_sentences
        self.min_share = min_share
        self.cite_sources = cite_sources

    def __repr__(self) -> str:
        return f"ExtractiveRAG({self.retriever!r}, k={self.k})"

    def retrieve(self, query: str) -> list[dict[str, Any]]:
        """The retriever's top `k` docs for `query` (possibly none)."""
        return self.retriever.retrieve(query, k=self.k)

    def generate(self, query: str, context: Mapping[str, Any] | None = None) -> str:
        """An extractive answer (see the module docstring); `NO_INFORMATION` if none."""
        terms = set(tokenize(query))
        docs = self.retrieve(query)
        if not docs:
            return NO_INFORMATION
        top = float(docs[0]["metadata"].get("score") or 1.0)
        # (weight, rank, position, sentence, source) for every sentence of every retrieved doc
        sentences: list[tuple[float, int, int, str, str]] = []
        for rank, doc in enumerate(docs):
            relevance = float(doc["metadata"].get("score") or top) / top
            source = str(doc["metadata"].get("source", f"doc-{rank}"))
            for position, sentence in enumerate(split_sentences(doc["content"])):
                shared = terms.intersection(tokenize(sentence))
                weight = relevance * sum(self.retriever.idf(t) for t in shared)
                sentences.append((weight, rank, position, sentence, source))
        ranked = sorted((c for c in sentences if c[0] > 0), key=lambda c: (-c[0], c[1], c[2]))
        if not ranked:
            return NO_INFORMATION
        floor = ranked[0][0] * self.min_share
        chosen = [c for c in ranked if c[0] >= floor][: self.max_sentences]
        if len(chosen) == 1 and self.max_sentences > 1:
            # a lone sentence reads better with the one that follows it in its document
            _, rank, position, _, _ = chosen[0]
            follow = [c for c in sentences if c[1] == rank and c[2] == position + 1]
            chosen += follow
        chosen.sort(key=lambda c: (c[1], c[2]))
        answer = " ".join(c[3] for c in chosen)
        if self.cite_sources:
            sources = list(dict.fromkeys(c[4] for c in chosen))
            answer += "\n\nSources: " + ", ".join(sources)
        return answer


def _app(retriever: BM25Retriever) -> StreamingRAG:
    return StreamingRAG(ExtractiveRAG(retriever), config=StreamConfig(chunk_size=3, sim_delay=0.03))


def demo_app() -> StreamingRAG:
    """A `StreamingRAG` over the bundled corpus: BM25 retrieval, extractive answers streamed
    3 words per chunk, 30 ms apart (the simulation strategy)."""
    return _app(BM25Retriever.from_folder(CORPUS_DIR))


def folder_app(path: str | os.PathLike[str] | None = None) -> StreamingRAG:
    """`demo_app()` over your own folder of ``.md`` / ``.txt`` files: `path`, else the env
    variable ``STREAMING_RAG_DOCS``. Raises `WorkerConfigError` naming the problem when
    neither is set, or the folder is missing or holds no such file."""
    folder = path if path is not None else os.environ.get(DOCS_ENV)
    if not folder:
        raise WorkerConfigError(
            f"folder_app needs a folder of .md/.txt files: set {DOCS_ENV} "
            "(or pass --docs DIR to `streaming-rag worker`)"
        )
    try:
        return _app(BM25Retriever.from_folder(folder))
    except OSError as exc:
        raise WorkerConfigError(f"cannot serve documents from {str(folder)!r}: {exc}") from None
