"""A loaded document through its collection's PII policy, before it is chunked (``IngestPipeline``).

The text, the title, the section headings and every string in the metadata (a mail's ``from``, a
loader's ``author``) are screened. What is stored is the screened text: chunks, vectors, postings and
the document body never see a redacted value, and citations' offsets are offsets into that text. The
record kept with the document (``documents.pii``) says under which policy version it was screened,
how many findings of each type there were (``counts`` in the text, ``elsewhere`` in its title,
headings and metadata), and where each replacement is in both texts, so a
stored offset maps back to the source file's (``pii.original_offset``). Values are never recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ragtune.errors import PiiRefusedError
from ragtune.govern.pii import PiiPolicy, Replacement, Screened, Sealed, Vault, apply_policy
from ragtune.models import LoadedDocument, Section

_MAX_DEPTH = 8  # metadata nested deeper is left as it is (loaders give flat metadata)


@dataclass(frozen=True)
class ScreenedDocument:
    document: LoadedDocument
    metadata: dict[str, Any]
    user_metadata: dict[str, Any] | None
    record: dict[str, Any]  # documents.pii
    sealed: tuple[Sealed, ...]


def screen_document(loaded: LoadedDocument, metadata: dict[str, Any], user_metadata: dict[str, Any] | None,
                    policy: PiiPolicy, version: int, *, vault: Vault | None = None) -> ScreenedDocument:
    """``loaded`` and its metadata with ``policy`` applied; ``PiiRefusedError`` when it holds a type
    the policy refuses (naming the types and where, never the values)."""
    sealed: dict[str, Sealed] = {}
    elsewhere: dict[str, int] = {}
    refused: dict[str, set[str]] = {}

    seen: dict[str, Screened] = {}  # a title is also in the metadata, a heading often twice

    def screen(text: str, where: str) -> Screened:
        result = seen.get(text)
        if result is None:
            result = seen[text] = apply_policy(text, policy, vault=vault)
        if where != "the text":
            for entity, n in result.counts.items():
                elsewhere[entity] = elsewhere.get(entity, 0) + n
        for entity in result.refused:
            refused.setdefault(entity, set()).add(where)
        sealed.update((s.token, s) for s in result.sealed)
        return result

    body = screen(loaded.text, "the text")
    title = screen(loaded.title, "the title").text if loaded.title else loaded.title
    sections = tuple(Section(new_offset(body.replacements, s.start), s.level, screen(s.title, "a heading").text)
                     for s in loaded.sections)
    metadata = _screen_values(metadata, lambda v, k: screen(v, f"metadata {k!r}").text)
    user = _screen_values(user_metadata, lambda v, k: screen(v, f"metadata {k!r}").text) \
        if user_metadata is not None else None
    if refused:
        what = "; ".join(f"{entity} in {', '.join(sorted(places))}" for entity, places in sorted(refused.items()))
        raise PiiRefusedError(loaded.uri, f"holds personal data the collection's policy (version {version}) "
                                          f"refuses: {what}")
    record = {"policy": version, "counts": body.counts, "elsewhere": dict(sorted(elsewhere.items())),
              "replaced": [[r.start, r.end, r.original_start, r.original_end, r.entity, r.action]
                           for r in body.replacements]}
    document = dataclasses.replace(loaded, text=body.text, title=title, sections=sections)
    return ScreenedDocument(document, metadata, user, record, tuple(sealed.values()))


def new_offset(replacements: tuple[Replacement, ...], original: int) -> int:
    """Where ``original`` (an offset into the unscreened text) is in the screened one."""
    shift = 0
    for r in replacements:
        if original < r.original_start:
            break
        if original < r.original_end:
            return r.start
        shift = r.end - r.original_end
    return original + shift


def replacements_of(record: dict[str, Any]) -> tuple[Replacement, ...]:
    """A document's replacements, back from its stored ``documents.pii`` record."""
    return tuple(Replacement(*r) for r in record.get("replaced", ()))


def _screen_values(value: Any, screen: Callable[[str, str], str], key: str = "", depth: int = 0) -> Any:
    if isinstance(value, str):
        return screen(value, key)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {k: _screen_values(v, screen, k if not key else f"{key}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_screen_values(v, screen, key, depth + 1) for v in value]
    return value
