"""decode_bytes: BOMs, strict UTF-8, detection, and refusing binary or undecodable data."""

from __future__ import annotations

import codecs
import random

import pytest

from ragtune.errors import DecodeError, UnsupportedFormatError
from ragtune.ingest.encoding import decode_bytes

FRENCH = (
    "Le café est très bon. Où est la bibliothèque ? Çà et là, les élèves étudient la poésie "
    "française; à Noël, l'hôtel ferme tôt.\n"
)
GERMAN = "Der Bär läuft über die Straße. Schöne Grüße aus München, wo die Mädchen Äpfel essen.\n"
MIXED = "naïve façade — “quoted” ünïcödé ✓ 漢字\n"

DECODES = [
    ("ascii", b"plain text\n", "plain text\n"),
    ("utf-8", MIXED.encode("utf-8"), MIXED),
    ("utf-8 with BOM", codecs.BOM_UTF8 + MIXED.encode("utf-8"), MIXED),
    ("utf-16 with BOM", MIXED.encode("utf-16"), MIXED),
    ("utf-16-be with BOM", codecs.BOM_UTF16_BE + MIXED.encode("utf-16-be"), MIXED),
    ("utf-32 with BOM", MIXED.encode("utf-32"), MIXED),
    ("utf-16-le without BOM", GERMAN.encode("utf-16-le"), GERMAN),
    ("utf-16-be without BOM", GERMAN.encode("utf-16-be"), GERMAN),
    ("latin-1 French", FRENCH.encode("latin-1"), FRENCH),
    ("latin-1 German", (GERMAN * 3).encode("latin-1"), GERMAN * 3),
    ("cp1252 smart quotes", ("“Quoted” – it’s " + FRENCH).encode("cp1252"), "“Quoted” – it’s " + FRENCH),
    ("CRLF newlines", b"one\r\ntwo\r\n", "one\ntwo\n"),
    ("CR newlines", b"one\rtwo\r", "one\ntwo\n"),
    ("tabs and form feeds are text", b"a\tb\x0cc\n", "a\tb\x0cc\n"),
    ("empty", b"", ""),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in DECODES], ids=[c[0] for c in DECODES])
def test_decodes(data: bytes, expected: str) -> None:
    assert decode_bytes(data, "f.txt") == expected


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00" + bytes(64)
BINARY = [
    ("png header", PNG),
    ("random bytes", random.Random(7).randbytes(4096)),
    ("NUL in ascii", b"hello\x00world, this is not text\n"),
    ("control characters", bytes(range(1, 9)) * 20 + b"some text"),
]


@pytest.mark.parametrize("data", [c[1] for c in BINARY], ids=[c[0] for c in BINARY])
def test_binary_is_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedFormatError, match="binary file") as info:
        decode_bytes(data, "image.txt")
    assert info.value.source == "image.txt"


UNDECODABLE = [
    # High bytes only (no NUL, no ASCII): neither UTF-8 nor any code page reads it as language.
    ("high random bytes", bytes(b | 0x80 for b in random.Random(1).randbytes(300))),
    ("broken utf-16 after BOM", codecs.BOM_UTF16_LE + "ok".encode("utf-16-le") + b"\x00\xd8"),
    ("broken utf-8 after BOM", codecs.BOM_UTF8 + b"ok \xff\xfe"),
]


@pytest.mark.parametrize("data", [c[1] for c in UNDECODABLE], ids=[c[0] for c in UNDECODABLE])
def test_undecodable_raises_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_bytes(data, "weird.txt")
    assert info.value.source == "weird.txt"
    assert info.value.reason
