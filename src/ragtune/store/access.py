"""Who may read and who may replace a document: the one read rule every query applies, and the rule
every write checks inside its transaction.

Reading: an admin reads everything; anyone reads a row without an ACL (public within its
collection) and a row whose ACL shares a group with them; a NULL ACL (a dataset's default) is for
admins only. In SQL the rule is the function ``ragtune_readable`` (migration 009), and
``readable()`` is the one place that writes the condition for a query: documents, chunks, traces,
datasets and their rows all go through it. Rows that belong to one principal instead (ingest jobs)
are read by their owner or an admin: ``owned()``.

Replacing (a new version of a document, or new metadata or ACL for it), checked with the row locked,
so nothing can change between the check and the write:

- a document the writer cannot read is refused with the same reason as any other refused
  replacement, so the refusal does not say whether the name belongs to a hidden document;
- the ACL never changes unless asked for: a write that gives no ACL keeps the stored one, and a
  write whose ACL differs from the stored one is refused unless ``change_acl`` is set;
- a non-admin may change the ACL only of a document restricted to groups all of which it belongs
  to, and only to groups of its own. So a public document (every reader's) can be hidden, or a
  shared one narrowed, only by an admin; an ingest key cannot take a document away from others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from ragtune.errors import AclChangeError, ReplaceDeniedError
from ragtune.models import Principal


@dataclass(frozen=True)
class WriteAccess:
    """Who writes, and whether they asked to change ACLs of documents that exist."""

    principal: Principal
    change_acl: bool = False


def principal_groups(principal: Principal) -> list[str]:
    """The groups a principal reads with; a name no key can hold (``!admins``, the admins-only mark
    of dataset rows) never counts, even when code builds a principal with it."""
    return sorted(g for g in principal.groups if not g.startswith("!"))


def readable(principal: Principal, column: str) -> tuple[sql.Composable, list[Any]]:
    """The condition under which ``principal`` may read a row whose ACL is ``column`` (``d.acl``),
    and its parameters: ``TRUE`` and none for an admin."""
    if principal.admin:
        return sql.SQL("TRUE"), []
    return (sql.SQL("ragtune_readable({}, %s::text[])").format(sql.Identifier(*column.split("."))),
            [principal_groups(principal)])


def owned(principal: Principal, column: str) -> tuple[sql.Composable, list[Any]]:
    """The condition under which ``principal`` may read a row that belongs to one principal (whose
    id is ``column``), such as an ingest job: its owner, or an admin. Such rows have no ACL: they
    are a key's own work, not documents shared with groups."""
    if principal.admin:
        return sql.SQL("TRUE"), []
    return sql.SQL("{} = %s").format(sql.Identifier(*column.split("."))), [principal.id]


def can_read(principal: Principal, acl: Iterable[str]) -> bool:
    """``ragtune_readable`` in Python, for a row already read."""
    groups = tuple(acl)
    return principal.admin or not groups or not set(principal_groups(principal)).isdisjoint(groups)


def describe_acl(acl: Iterable[str]) -> str:
    groups = sorted(acl)
    return f"[{', '.join(groups)}]" if groups else "public"


def check_replace(access: WriteAccess, uri: str, current: tuple[str, ...], target: tuple[str, ...]) -> None:
    """Raise unless ``access`` may replace the document ``uri`` whose ACL is ``current`` with one
    whose ACL is ``target``."""
    principal = access.principal
    if not can_read(principal, current):
        raise ReplaceDeniedError(uri, "this key may not replace a document of that name")
    if tuple(sorted(target)) == tuple(sorted(current)):
        return
    if not access.change_acl:
        raise AclChangeError(uri, f"this would change its ACL from {describe_acl(current)} to {describe_acl(target)};"
                                  " ask for it explicitly (--change-acl, change_acl=true)")
    if principal.admin:
        return
    if not current or not set(current) <= principal.groups or not set(target) <= principal.groups:
        raise ReplaceDeniedError(uri, "this key may not change the ACL of that document: only an admin changes the "
                                      "ACL of a public document or of one shared with groups outside the key's own")
