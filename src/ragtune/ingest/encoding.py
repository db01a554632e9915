"""Bytes to text for every text-based loader: one place that decides what an encoding is.

Order of decisions, and why:

1. A byte-order mark is authoritative (UTF-32 marks are checked before UTF-16 ones, since
   ``FF FE 00 00`` also starts with the UTF-16-LE mark).
2. NUL bytes mean binary, unless the NULs sit at every other byte, which is BOM-less UTF-16
   text in a Latin script; that is tried before giving up.
3. Strict UTF-8 next: almost nothing that is not UTF-8 decodes as UTF-8 by accident, and it is
   by far the most common encoding, so detection is never asked to second-guess it.
4. Only then charset-normalizer. On Western text it often ties between several single-byte
   code pages (cp1250, cp1252, cp775 all decode French with zero "chaos"), and its tie-break,
   language coherence, is noisy on short text: it reads Latin-1 French as cp775 or cp1250.
   Among candidates with the lowest chaos we prefer cp1252, the encoding WHATWG substitutes for
   "latin-1". Measured on French, German, Spanish, Czech, Polish, Russian (cp1251, KOI8-R),
   Greek, Japanese and Chinese samples this is right wherever charset-normalizer alone is, and
   also on Latin-1 French; Turkish cp1254 is misread either way.
5. Text whose characters are mostly control characters is binary whatever its encoding.

Newlines come out as ``\\n`` only, so offsets computed on the text do not depend on the platform
the file was written on.
"""

from __future__ import annotations

import codecs
import re

from ragtune.errors import DecodeError, UnsupportedFormatError

# (BOM, codec) with UTF-32 first: its little-endian mark starts with UTF-16-LE's.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# Detected encodings preferred when charset-normalizer scores several candidates the same.
_PREFERRED = ("utf_8", "cp1252", "latin_1", "iso8859_15")

# C0/C1 control characters other than tab, newline, vertical tab, form feed, carriage return.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_MAX_CONTROL_RATIO = 0.10
_SAMPLE_CHARS = 65536
_NEWLINES = re.compile(r"\r\n?")


def decode_bytes(data: bytes, source: str) -> str:
    """Decode a file's bytes to text with ``\\n`` newlines, or refuse it with a reason.

    Raises ``UnsupportedFormatError`` for data that looks binary and ``DecodeError`` for text
    whose encoding cannot be determined. ``source`` only names the input in errors.
    """
    if not data:
        return ""
    text = _decode_with_bom(data, source)
    if text is None:
        if b"\x00" in data:
            text = _decode_bomless_utf16(data)
            if text is None:
                raise UnsupportedFormatError(source, "binary file (contains NUL bytes)")
        else:
            text = _decode_utf8(data)
            if text is None:
                text = _detect(data, source)
    _refuse_control_heavy(text, source)
    # A stray NUL in otherwise fine text (UTF-16 with a BOM can carry one) is dropped: PostgreSQL
    # text cannot store it, and it is never meaningful in a document.
    return _NEWLINES.sub("\n", text).replace("\x00", "")


def _decode_with_bom(data: bytes, source: str) -> str | None:
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(codec)
            except UnicodeDecodeError as exc:
                raise DecodeError(source, f"invalid {codec} after its byte-order mark: {exc}") from exc
    return None


def _decode_utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _decode_bomless_utf16(data: bytes) -> str | None:
    """UTF-16 without a BOM: Latin-script text has a NUL in every other byte."""
    if len(data) % 2:
        return None
    sample = data[:4096]
    half = len(sample) // 2
    even_nuls = sample[0::2].count(0)
    odd_nuls = sample[1::2].count(0)
    if odd_nuls >= 0.4 * half and even_nuls <= 0.05 * half:
        codec = "utf-16-le"
    elif even_nuls >= 0.4 * half and odd_nuls <= 0.05 * half:
        codec = "utf-16-be"
    else:
        return None
    try:
        text = data.decode(codec)
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def _detect(data: bytes, source: str) -> str:
    from charset_normalizer import from_bytes

    results = list(from_bytes(data))
    if not results:
        raise DecodeError(source, "not UTF-8 and no known encoding decodes it into plausible text")
    best = min(results, key=lambda r: (r.chaos, -r.coherence))
    # Coherence (language fit) is unreliable on short text: cp775 can "beat" cp1252 on French.
    # Ties are therefore decided on chaos (mess) alone.
    tied = [r for r in results if r.chaos - best.chaos <= 0.01]
    for preferred in _PREFERRED:
        for result in tied:
            if preferred in result.could_be_from_charset:
                try:
                    return data.decode(preferred)
                except UnicodeDecodeError:  # cp1252 leaves five bytes undefined
                    continue
    return str(best)


def _refuse_control_heavy(text: str, source: str) -> None:
    sample = text[:_SAMPLE_CHARS]
    if not sample:
        return
    controls = len(_CONTROL.findall(sample))
    if controls / len(sample) > _MAX_CONTROL_RATIO:
        raise UnsupportedFormatError(source, f"binary file ({controls} control characters in the first {len(sample)})")
