"""The bundled demo pipeline: BM25 ranking, extractive answers, folder loading, factories."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming_rag import EventType, StreamingRAG
from streaming_rag_worker import WorkerConfigError
from streaming_rag_worker.demo_app import (
    CORPUS_DIR,
    DOCS_ENV,
    NO_INFORMATION,
    SAMPLE_QUESTION,
    BM25Retriever,
    ExtractiveRAG,
    demo_app,
    folder_app,
    split_sentences,
    tokenize,
)

DOCS = [
    {"content": "Cats purr when they are content. Cats sleep a lot.", "metadata": {"source": "c"}},
    {"content": "Dogs bark at strangers. Dogs love long walks.", "metadata": {"source": "d"}},
    {"content": "Parrots can imitate human speech. Some parrots live 60 years."},
]


@pytest.fixture(scope="module")
def corpus() -> BM25Retriever:
    return BM25Retriever.from_folder(CORPUS_DIR)


def test_tokenize_drops_stop_words_and_stems() -> None:
    assert tokenize("What are the Redis Streams?") == ["redis", "stream"]
    assert tokenize("streaming streams stream") == ["stream", "stream", "stream"]


def test_split_sentences_skips_headings_and_keeps_abbreviations() -> None:
    text = "# Title\n\nFirst sentence by Lewis et al. in 2020. Second one!\nThird?"
    assert split_sentences(text) == [
        "First sentence by Lewis et al. in 2020.",
        "Second one!",
        "Third?",
    ]


def test_bm25_ranks_the_relevant_doc_first() -> None:
    retriever = BM25Retriever(DOCS)
    hits = retriever.retrieve("why do dogs bark?", k=4)
    assert [h["metadata"]["source"] for h in hits] == ["d"]
    assert hits[0]["content"] == DOCS[1]["content"]
    assert hits[0]["metadata"]["score"] > 0
    assert retriever.retrieve("parrot speech")[0]["metadata"]["source"] == "doc-2"


def test_bm25_respects_k_and_orders_by_score(corpus: BM25Retriever) -> None:
    hits = corpus.retrieve("redis stream entries xread job queue worker", k=2)
    assert len(hits) == 2
    assert hits[0]["metadata"]["score"] >= hits[1]["metadata"]["score"]
    assert corpus.retrieve("redis", k=0) == []


@pytest.mark.parametrize(
    ("question", "source"),
    [
        ("What is retrieval-augmented generation?", "retrieval-augmented-generation.md"),
        ("What is BM25 and who developed it?", "bm25.md"),
        ("How does XREAD let subscribers follow a stream?", "redis-streams.md"),
        ("Why stream tokens and what is the time to first token?", "token-streaming.md"),
        ("What does a job queue do when a worker crashes?", "job-queues.md"),
        ("Where did Valkey come from?", "embedded-valkey.md"),
    ],
)
def test_bundled_corpus_ranks_the_matching_note_first(
    corpus: BM25Retriever, question: str, source: str
) -> None:
    hits = corpus.retrieve(question)
    assert hits[0]["metadata"]["source"] == source
    assert hits[0]["metadata"]["title"]


def test_retrieval_returns_nothing_when_no_term_matches(corpus: BM25Retriever) -> None:
    assert corpus.retrieve("xyzzy plugh quux") == []
    assert corpus.retrieve("what is the") == []  # stop words only


def test_extractive_answer_quotes_the_matching_doc(corpus: BM25Retriever) -> None:
    rag = ExtractiveRAG(corpus)
    answer = rag.generate("What is BM25?", {})
    bm25_sentences = split_sentences((CORPUS_DIR / "bm25.md").read_text())
    body, _, sources = answer.partition("\n\nSources: ")
    assert any(sentence in body for sentence in bm25_sentences)
    assert body.startswith(bm25_sentences[0])  # the defining sentence comes first
    assert "bm25.md" in sources.split(", ")


def test_extractive_answer_keeps_reading_order() -> None:
    rag = ExtractiveRAG(BM25Retriever(DOCS), cite_sources=False)
    assert rag.generate("dogs bark walks", None) == "Dogs bark at strangers. Dogs love long walks."


def test_extractive_answer_is_bounded(corpus: BM25Retriever) -> None:
    rag = ExtractiveRAG(corpus, max_sentences=2, cite_sources=False)
    answer = rag.generate("redis stream entries consumer groups xread xadd", {})
    assert 1 <= len(split_sentences(answer)) <= 2


def test_no_match_gives_the_no_information_answer(corpus: BM25Retriever) -> None:
    rag = ExtractiveRAG(corpus)
    assert rag.retrieve("xyzzy plugh") == []
    assert rag.generate("xyzzy plugh", {}) == NO_INFORMATION


def test_folder_loading(tmp_path: Path) -> None:
    (tmp_path / "alpha.md").write_text("# Alpha notes\n\nThe alpha reactor runs on helium.\n")
    (tmp_path / "beta.txt").write_text("Beta particles are fast electrons.")
    (tmp_path / "ignored.json").write_text('{"helium": "not a doc"}')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.md").write_text("helium helium helium")
    retriever = BM25Retriever.from_folder(tmp_path)
    assert len(retriever) == 2
    hit = retriever.retrieve("helium")[0]
    assert hit["metadata"]["source"] == "alpha.md"
    assert hit["metadata"]["title"] == "Alpha notes"
    meta = retriever.retrieve("electrons")[0]["metadata"]
    assert meta == {"source": "beta.txt", "title": "beta", "score": meta["score"]}
    # no server path in what the events carry to a browser
    assert all(str(tmp_path) not in str(d["metadata"]) for d in retriever.retrieve("helium"))


def test_folder_loading_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no \.md or \.txt"):
        BM25Retriever.from_folder(tmp_path)
    with pytest.raises(NotADirectoryError):
        BM25Retriever.from_folder(tmp_path / "missing")


def test_bad_documents_are_refused() -> None:
    with pytest.raises(ValueError, match="document 1"):
        BM25Retriever(["fine", {"text": "no content key"}])


def test_demo_app_streams_an_extractive_answer() -> None:
    rag = demo_app()
    assert isinstance(rag, StreamingRAG)
    assert rag.strategy == "sim"
    assert rag.config.chunk_size == 3
    result = rag.query(SAMPLE_QUESTION)
    events = result["events"]
    assert events[-1].type is EventType.GENERATION_DONE
    retrieval = next(e for e in events if e.type is EventType.RETRIEVAL_DONE)
    assert retrieval.data["docs"][0]["metadata"]["source"] == "redis-streams.md"
    for doc in retrieval.data["docs"]:  # file name, title, score: never the worker's paths
        assert set(doc["metadata"]) == {"source", "title", "score"}
    assert "joins late" in result["answer"]
    assert sum(e.type is EventType.CHUNK for e in events) > 1


def test_folder_app_reads_the_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notes.md").write_text("Zebras have black and white stripes.")
    monkeypatch.setenv(DOCS_ENV, str(tmp_path))
    answer = folder_app().query("What stripes do zebras have?")["answer"]
    assert answer.startswith("Zebras have black and white stripes.")


def test_folder_app_errors_name_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DOCS_ENV, raising=False)
    with pytest.raises(WorkerConfigError, match=DOCS_ENV):
        folder_app()
    with pytest.raises(WorkerConfigError, match="cannot serve documents"):
        folder_app(tmp_path / "missing")
