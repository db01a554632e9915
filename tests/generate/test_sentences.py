"""Sentences across PDF-style line breaks with exact offsets, and the extractive answer that no
longer repeats one sentence from two copies of a document."""

from __future__ import annotations

import pytest

from ragtune import LoadedDocument
from ragtune.engine import Ragtune
from ragtune.generate.answer import Answerer, AskOptions
from ragtune.generate.grounding import SupportScorer
from ragtune.generate.prompt import build_prompt
from ragtune.generate.sentences import sentence_spans, split_sentences, unwrap
from ragtune.ingest.lexical import LexicalAnalyzer
from ragtune.models import Chunk, Hit

# As pypdf extracts a justified paragraph: a line break wherever the line was full, one word
# hyphenated across a break, a short title line, and a blank line between paragraphs.
PDF_PAGE = (
    "Package management\n"
    "The package manager keeps a database of every installed file, so that removing a pack-\n"
    "age removes exactly the files it installed and nothing else. Configuration files are\n"
    "kept when a package is removed, unless it is purged.\n"
    "\n"
    "Security updates are published on the security mirror within a day of the advisory.\n"
)


def _check_offsets(text: str, offset: int = 0) -> list[str]:
    spans = sentence_spans(text, offset)
    for (a, b), sentence in zip(spans, split_sentences(text), strict=True):
        assert text[a - offset:b - offset] == sentence
    return [text[a - offset:b - offset] for a, b in spans]


def test_a_sentence_runs_across_pdf_line_breaks_with_exact_offsets() -> None:
    sentences = _check_offsets(PDF_PAGE, offset=1000)
    assert [unwrap(s) for s in sentences] == [
        "Package management",  # a short line on its own: the next word would have fitted on it
        "The package manager keeps a database of every installed file, so that removing a package removes "
        "exactly the files it installed and nothing else.",
        "Configuration files are kept when a package is removed, unless it is purged.",
        "Security updates are published on the security mirror within a day of the advisory.",
    ]
    # The spans are the document's own characters, line breaks and hyphen included.
    assert "pack-\nage" in sentences[1] and sentences[2] == (
        "Configuration files are\nkept when a package is removed, unless it is purged.")
    start = PDF_PAGE.index("Configuration")
    assert sentence_spans(PDF_PAGE, 1000)[2] == (1000 + start, 1000 + PDF_PAGE.index("purged.") + len("purged."))


@pytest.mark.parametrize(("text", "expected"), [
    # a single line break inside a paragraph is a space; a blank line still ends a sentence
    ("Line one\nLine two", ["Line one\nLine two"]),
    ("Line one\n\nLine two", ["Line one", "Line two"]),
    ("Line one\n  \n  Line two", ["Line one", "Line two"]),
    # list items, headings and table rows keep their own lines
    ("Steps to follow\n- install it\n- run it", ["Steps to follow", "- install it", "- run it"]),
    ("# Install\nRun the installer from the first disc and follow the questions it asks you.",
     ["# Install", "Run the installer from the first disc and follow the questions it asks you."]),
    ("| a | b |\n| 1 | 2 |", ["| a | b |", "| 1 | 2 |"]),
    # a SQuAD document: its title line, then one long line
    ("Normans\nThe Normans were the people who gave their name to Normandy, a region in France. They came.",
     ["Normans", "The Normans were the people who gave their name to Normandy, a region in France.", "They came."]),
    # a hyphen at a line break before a capital is a compound word, kept by unwrap
    ("Jean-\nPierre went home", ["Jean-\nPierre went home"]),
])
def test_line_breaks(text: str, expected: list[str]) -> None:
    assert _check_offsets(text) == expected


def test_unwrap() -> None:
    assert unwrap("infor-\nmation about\n  the  system") == "information about the  system"
    assert unwrap("Jean-\nPierre") == "Jean-Pierre"
    assert unwrap("well-known") == "well-known"


def _hit(rank: int, text: str, uri: str, start: int = 0) -> Hit:
    chunk = Chunk(ordinal=0, text=text, start=start, end=start + len(text), id=rank, document_id=rank)
    return Hit(chunk=chunk, score=1.0 / rank, rank=rank, uri=uri, document_id=rank, metadata={})


QUESTION = "What happens to configuration files when a package is removed?"
HTML_COPY = ("Configuration files are kept when a package is removed, unless it is purged. "
             "The package manager keeps a database of every installed file.")


def test_extractive_answer_cites_one_copy_of_a_repeated_sentence(embedder) -> None:  # type: ignore[no-untyped-def]
    answerer = Answerer(None, SupportScorer(embedder, LexicalAnalyzer()))
    hits = [_hit(1, PDF_PAGE, "manual.pdf", start=40), _hit(2, HTML_COPY, "manual.html")]
    prompt = build_prompt(QUESTION, hits, count_tokens=lambda t: len(t) // 3 + 1, budget=4000)
    candidates = answerer._candidates(QUESTION, prompt.sources)
    # The same sentence in both copies, as the best two candidates: before, both were the answer.
    top = sorted(candidates, key=lambda c: -c.evidence.support)[:2]
    assert [unwrap(c.text) for c in top] == [unwrap(top[0].text)] * 2
    text, sentences = answerer._extractive(candidates, AskOptions(extractive_sentences=2))
    assert text.count("Configuration files are kept") == 1, text
    assert "\n" not in text and sentences[0].text.startswith("Configuration files are kept when")
    cited = [s.citations for s in sentences if s.text.startswith("Configuration")]
    assert cited == [(1,)]  # the first source among equals
    assert len({s.text for s in sentences}) == len(sentences)
    # The candidate's offsets are the document's characters, across the line break.
    best = next(c for c in candidates if c.source.number == 1 and unwrap(c.text).startswith("Configuration"))
    assert PDF_PAGE[best.start - 40:best.end - 40] == best.text


def test_extractive_ask_over_two_copies_end_to_end(rt: Ragtune) -> None:
    # Different enough around the shared sentence that ingestion keeps them as two documents.
    pdf = PDF_PAGE + "\nMirrors are listed on the project's web site; choose one close to you.\n"
    html = ("Removing software\n\n" + HTML_COPY + " Packages are downloaded from a mirror and checked against "
            "signed release files before they are unpacked.\n")
    rt.ingest_documents([LoadedDocument(uri="manual.pdf", text=pdf), LoadedDocument(uri="manual.html", text=html)],
                        collection="docs")
    answer = rt.ask(QUESTION, collection="docs", generator="extractive", top_k=5)
    assert not answer.abstained
    assert {h.uri for h in answer.hits} >= {"manual.pdf", "manual.html"}
    assert answer.text.count("Configuration files are kept") == 1, answer.text
    for c in answer.citations:
        _, body, _ = rt.document(c.uri, collection="docs")
        assert body[c.start:c.end] == c.text
