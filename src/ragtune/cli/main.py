"""The ``ragtune`` command: the command tree, assembled from the command modules.

One registration style: each command module holds its commands on plain ``typer.Typer()`` apps
(no name, no help), one per group it adds to; this module names the groups, gives their help and
attaches the modules' apps with ``add_typer`` without a name, which merges their commands into the
group (or into the top level). So the whole tree and its order are read here, and no command
module imports this one: it is only the entry point (``ragtune = "ragtune.cli.main:app"``,
``python -m ragtune.cli.main``). Shared helpers are in ``cli/common.py``.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperOption

from ragtune.cli import (
    admin,
    answerability,
    ask,
    audit,
    chat,
    datasets,
    demo,
    documents,
    erase,
    evaluate,
    models,
    policy,
    reader,
    rerank,
    schedules,
    search,
    serve,
    traces,
    tune,
    tune_eval,
    tune_search,
)


def _flags_without_type() -> None:
    """Typer (0.29) prints the type of every option in help, flags included: ``--json <bool>``,
    even ``--help <bool>``, which reads as a value the flag wants. A flag takes no value, so its
    type column is left empty, as Click's plain help does. Typer offers no setting for this and the
    help option is built inside Click, so the one method that draws the column is wrapped here;
    if a later Typer renames it, nothing changes (the help test then shows ``<bool>`` again)."""
    draw = getattr(TyperOption, "display_type_rich", None)
    if draw is None or getattr(draw, "skips_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:  # Typer's own copy of Click's Context
        return None if self.is_flag else draw(self, ctx)

    display_type_rich.skips_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_type()
app = typer.Typer(add_completion=False, no_args_is_help=True, help="ragtune: RAG and fine-tuning on PostgreSQL.")


def _group(name: str, help_text: str, *parts: typer.Typer) -> None:
    """``ragtune NAME``: a group holding the commands of ``parts``, in their order."""
    group = typer.Typer(no_args_is_help=True, help=help_text)
    for part in parts:
        group.add_typer(part)
    app.add_typer(group, name=name)


# The order below is the order `ragtune --help` lists them in.
# serve, ingest, sync, search, ask, chat, feedback, stats, demo
for commands in (serve.app, documents.app, search.app, ask.app, chat.app, traces.feedback_app, traces.stats_app,
                 demo.app):
    app.add_typer(commands)
app.command("erase")(erase.erase)
_group("docs", "List, show and remove documents.", documents.docs_app)
_group("db", "The embedded PostgreSQL server.", admin.db_app)
_group("config", "Configuration.", admin.config_app)
_group("eval", "Measure retrieval quality (nDCG, recall, MRR per search mode) and answer quality (exact match, "
                "F1, abstention, citations, groundedness per generator) on a benchmark dataset.", evaluate.app)
_group("collections", "Collections.", admin.collections_app)
_group("traces", "Recorded traces of searches and answers: list them, or show one with its timings, sources and "
                   "prompt.", traces.app)
_group("rerank", "Train and list cross-encoder rerankers.", rerank.app)
_group("keys", "API keys of the HTTP server (shown once, stored hashed).", serve.keys_app)
_group("schedules", "Scheduled syncs of a folder or s3:// source, run by `ragtune serve` as ingest jobs.",
       schedules.app)
_group("answerability", "Train the answerability model used for abstention.", answerability.app)
_group("reader", "Train and list the extractive reader (`ask -g reader`; abstention for every generator).",
       reader.app)
_group("tune", "Fine-tune LoRA adapters on datasets (SFT or DPO).", tune.app, tune_eval.app, tune_search.app)
_group("models", "Registered fine-tuned models: track, register, promote, roll back, export (MLflow in the "
                 "project's PostgreSQL).", models.app)
_group("data", "Evaluation data packages and fine-tuning datasets.", datasets.app)
_group("audit", "The hash-chained audit log of who read and changed what: verify it, list or export events.",
       audit.app)
_group("policy", "Collections' policies (PII, injection screening, answer rules): check, set, show, history.",
       policy.app)
_group("pii", "Personal data: scan a file as a policy would; reveal a pseudonym with the vault key.",
       policy.pii_app)
_group("quarantine", "Chunks held out of retrieval by a collection's injection policy: list and release them.",
       policy.quarantine_app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
