"""E-mail: one message (``.eml``) or a mailbox of them (``.mbox``), with the standard library's
``email`` package (policy ``default``: headers decoded, the body's charset applied).

A message is one document: its ``From``, ``To``, ``Cc``, ``Date`` and ``Subject`` lines, then the
body (the plain-text part, or the HTML part as text when there is no plain one); the subject is its
title and the headers are also metadata. Each attachment is a child document, read by the loader the
registry chooses for its file name and content (``archives.read_member``), named
``MESSAGE#attachment/N/FILENAME`` and holding the message in ``container``. A mailbox's messages are
``MAILBOX#N`` (1-based, in file order).

An attachment that fails (a format no loader reads, a corrupt file) is reported as its own failure
and the message and its other attachments are still read. Limits: a message holds at most
``max_container_members`` attachments and their decoded size adds up to at most
``max_expanded_bytes``; a message attached to a message is not read (``archives.ArchiveLoader``:
every file inside a file is one level deep).
"""

from __future__ import annotations

import email
import email.policy
import mailbox
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from ragtune.errors import EmptyDocumentError, ExpansionLimitError, IngestError
from ragtune.ingest.loaders.archives import ArchiveLoader, Choose, read_member
from ragtune.ingest.loaders.base import LoaderOptions, base_metadata, check_size, read_checked
from ragtune.ingest.loaders.containers import size
from ragtune.ingest.loaders.html import html_to_text
from ragtune.ingest.loaders.jsonl import BadRecordsError
from ragtune.models import LoadedDocument

HEADERS = ("from", "to", "cc", "date", "subject")


class EmailLoader(ArchiveLoader):
    def load(self, source: Path) -> Iterator[LoadedDocument]:
        message = email.message_from_bytes(read_checked(source, self.options), policy=email.policy.default)
        assert isinstance(message, EmailMessage)  # what policy.default builds
        failures: list[IngestError] = []
        yield from message_documents(message, str(source), source, self.choose, self.options, failures)
        if failures:
            raise BadRecordsError(str(source), failures, len(failures))


class MboxLoader(ArchiveLoader):
    def load(self, source: Path) -> Iterator[LoadedDocument]:
        check_size(source, self.options)
        box = mailbox.mbox(str(source), create=False)
        failures: list[IngestError] = []
        count = 0
        try:
            for count, key in enumerate(box.keys(), start=1):
                if count > self.options.max_container_members:
                    raise ExpansionLimitError(str(source), f"a mailbox of over {self.options.max_container_members:,} "
                                                           "messages, over max_container_members",
                                              "max_container_members")
                try:
                    message = email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
                    assert isinstance(message, EmailMessage)  # what policy.default builds
                    yield from message_documents(message, f"{source}#{count}", source, self.choose, self.options,
                                                 failures)
                except IngestError as exc:
                    failures.append(exc)
        finally:
            box.close()
        if count == 0:
            raise EmptyDocumentError(str(source), "a mailbox with no messages")
        if failures:
            raise BadRecordsError(str(source), failures, count)


def message_documents(message: EmailMessage, uri: str, source: Path, choose: Choose, options: LoaderOptions,
                      failures: list[IngestError]) -> Iterator[LoadedDocument]:
    """The message as a document, then its attachments' documents; failed attachments are added to
    ``failures``."""
    headers = {name: str(message[name]) for name in HEADERS if message[name] is not None}
    lines = "".join(f"{name.capitalize()}: {value}\n" for name, value in headers.items())
    body = _body(message)
    attachments = list(message.iter_attachments())
    if not body.strip() and not attachments:
        raise EmptyDocumentError(uri, "a message with no text and no attachments")
    metadata: dict[str, Any] = {**base_metadata(source, "email"), **headers}
    yield LoadedDocument(uri=uri, text=f"{lines}\n{body}".strip() + "\n", metadata=metadata,
                         title=headers.get("subject") or None, mime="message/rfc822")
    if len(attachments) > options.max_container_members:
        raise ExpansionLimitError(uri, f"{len(attachments):,} attachments, over max_container_members",
                                  "max_container_members")
    expanded = 0
    for number, part in enumerate(attachments, start=1):
        name = part.get_filename() or f"attachment-{number}"
        target = f"{uri}#attachment/{number}/{name}"
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else str(part.get_content()).encode()
        expanded += len(data)
        if expanded > options.max_expanded_bytes:
            failures.append(ExpansionLimitError(target, f"attachments expand past {size(options.max_expanded_bytes)}, "
                                                        "over max_expanded_bytes", "max_expanded_bytes"))
            break
        try:
            yield from read_member(uri, name, data, choose, options, uri=target)
        except BadRecordsError as exc:
            failures.extend(exc.failures)
        except IngestError as exc:
            failures.append(exc)


def _body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    content = part.get_content()
    text = content if isinstance(content, str) else content.decode("utf-8", "replace")
    if part.get_content_subtype() == "html":
        return html_to_text(text)[0]
    return text.replace("\r\n", "\n")
