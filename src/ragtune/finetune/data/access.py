"""Who may read a fine-tuning dataset (issue 14): the ACL values, the SQL predicate every read of
``DatasetStore`` goes through, the ACL of a row made from documents, and what a principal may know of
a version whose rows or referenced eval sets it cannot all read.

A version's ACL is NULL (admins only, the default), empty (every principal) or a list of groups
(principals in any of them). A row may carry its own ACL, checked on top of its version's: NULL or
empty (as the version) or groups. Kept apart from ``store`` because these rules are the seam
the server, the CLI and future row builders (training on retrieved documents) share.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ragtune.errors import DatasetError
from ragtune.models import Principal
from ragtune.store.access import readable

if TYPE_CHECKING:
    from ragtune.finetune.data.versions import DatasetInfo

# The groups an API key may hold (``server.auth.check_groups``): a dataset ACL naming anything else
# could never match a key, so it is refused as a typo.
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}")
# A row ACL naming no group a principal can hold ('!' is not in a group name, and the predicate
# drops it from the principal's groups anyway): the row is for admins only, whatever its version's
# ACL. Needed because a row's NULL means "as the version", not "admins only".
ADMINS_ONLY = "!admins"


def check_acl(acl: Iterable[str] | None) -> tuple[str, ...] | None:
    """A version ACL as stored: None (admins only), ``()`` (every principal) or sorted groups."""
    if acl is None:
        return None
    if isinstance(acl, str):  # "hr,eng" would become the groups h, r, ",", e, n, g
        raise DatasetError(f"an ACL is a list of groups, not the string {acl!r}")
    out = tuple(sorted(set(acl)))
    for group in out:
        if not isinstance(group, str) or not _GROUP.fullmatch(group):
            raise DatasetError(f"invalid group name {group!r} in a dataset ACL: letters, digits and . _ : @ -, "
                               "at most 100")
    return out


def acl_label(acl: Sequence[str] | None) -> str:
    """How the CLI shows a version ACL."""
    return "admins only" if acl is None else ",".join(acl) or "public"


def row_acl(document_acls: Iterable[Sequence[str]]) -> tuple[str, ...] | None:
    """The ACL of a row made from documents with these ACLs (each empty for a public document).

    A principal may read the row only if it may read every one of its documents. A document ACL
    means "any of these groups", so "every document" is a conjunction of such lists, which one "any
    of" list cannot always express: documents for ``a`` and for ``b`` admit only principals in both.
    The list returned holds the groups common to every restricted document: a principal in one of
    them may read each document (never too wide), while one in ``a`` and ``b`` separately is refused
    (the safe side). No group in common: :data:`ADMINS_ONLY`. Every document public: ``()``, as
    readable as the dataset. No document at all: ``None``, the row follows its dataset.
    """
    acls = [frozenset(a) for a in document_acls]
    if not acls:
        return None
    restricted = [a for a in acls if a]
    if not restricted:
        return ()
    common = frozenset.intersection(*restricted)
    return tuple(sorted(common)) if common else (ADMINS_ONLY,)


def sql_acl(acl: Sequence[str] | None) -> list[str] | None:
    return None if acl is None else list(acl)


def visible(principal: Principal) -> tuple[str, list[Any]]:
    """The one read rule (``store.access.readable``) for a version (``datasets d``): admins read
    every version; others one whose ACL is empty or shares a group (a NULL ACL, admins only,
    satisfies neither)."""
    condition, params = readable(principal, "d.acl")
    return condition.as_string(None), params


def row_visible(principal: Principal) -> tuple[str, list[Any]]:
    """The rule for a row (``dataset_rows r``) of a version the principal reads: no ACL of its own,
    or one the read rule lets it read. Never NULL, so ``NOT`` of it is safe."""
    if principal.admin:
        return "TRUE", []
    condition, params = readable(principal, "r.acl")
    return f"(r.acl IS NULL OR coalesce({condition.as_string(None)}, false))", params


def withheld(info: DatasetInfo, rows: int, train: int) -> DatasetInfo:
    """``info`` for a principal that cannot read every row: the counts of the rows it reads, and
    nothing computed over all rows (the report, the reasons, the fields and roles of the schema)."""
    why = "they cover rows this principal cannot read"
    return replace(info, row_count=rows, train_rows=train, eval_rows=rows - train,
                   schema={"format": info.schema.get("format"), "row_acls": True},
                   report={"withheld": f"the validation report is withheld: {why}"},
                   reasons=() if info.valid else (f"validation failed; the reasons are withheld: {why}",))


def without_eval_sets(info: DatasetInfo, hidden: set[str]) -> DatasetInfo:
    """``info`` with the leakage into eval sets the principal cannot read kept as counts under
    neutral names: their names and which of their rows matched (``other_line``) are theirs."""
    leakage = info.report.get("leakage", {})
    names = sorted(n for n in leakage.get("eval_sets", {}) if n in hidden)
    if not names:
        return info
    alias = {n: f"hidden eval set {k}" for k, n in enumerate(names, start=1)}
    eval_sets = {alias.get(n, n): ({**found, "examples": [{"line": e["line"]} for e in found["examples"]]}
                                   if n in alias else found)
                 for n, found in leakage["eval_sets"].items()}

    def neutral(reasons: Sequence[str]) -> list[str]:
        out = list(reasons)
        for n, name in alias.items():  # validate's reason ends "near-duplicate eval set 'NAME'"
            out = [r.replace(f"eval set {n!r}", name) for r in out]
        return out

    report = {**info.report, "leakage": {**leakage, "eval_sets": eval_sets},
              "blocking": neutral(info.report.get("blocking", []))}
    return replace(info, report=report, reasons=tuple(neutral(info.reasons)))
