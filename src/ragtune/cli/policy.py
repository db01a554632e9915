"""``ragtune policy check|set|show|history|entities`` and ``ragtune pii scan|reveal``: collections'
policies (``govern.policy``) and the personal data they govern (``govern.pii``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ragtune.cli.common import AsJson, DataDir, console, engine, err_console, run_command
from ragtune.errors import ConfigError, PolicyError
from ragtune.models import Principal

app = typer.Typer()
pii_app = typer.Typer()
quarantine_app = typer.Typer()

PolicyFile = Annotated[Path, typer.Argument(help="A policy file (TOML): [pii], [injection], [answers].")]
Collection = Annotated[str, typer.Argument(help="The collection the policy governs.")]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such policy file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None


def _problems(exc: PolicyError) -> None:
    for problem in exc.problems:
        err_console.print(f"[bold red]error[/]: {escape(problem)}", highlight=False, soft_wrap=True)


@app.command("check")
def policy_check(path: PolicyFile, as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Check a policy file: every problem with its line (exit code 1), or what it says."""
    def body() -> bool:
        from ragtune.govern.pii import known_entities
        from ragtune.govern.policy import parse_policy

        source = _read(path)
        try:
            policy = parse_policy(source, name=str(path), known_entities=known_entities)
        except PolicyError as exc:
            if as_json:
                console.print_json(json.dumps({"ok": False, "problems": exc.problems}))
            else:
                _problems(exc)
            return False
        if as_json:
            console.print_json(json.dumps({"ok": True, "rules": policy.rules()}))
        else:
            console.print(f"[green]ok[/]: {path}", highlight=False)
            _print_rules(policy.rules())
        return True

    if not run_command(body):
        raise typer.Exit(1)


@app.command("set")
def policy_set(collection: Collection, path: PolicyFile, data_dir: DataDir = None) -> None:
    """Check a policy file and make it the collection's next policy version (audited)."""
    def store(rt: Any, source: str) -> None:
        change = rt.policies.set(collection, source, Principal.system(), name=str(path))
        console.print(f"[green]policy version {change.stored.version}[/] of {collection!r} is in force",
                      highlight=False)
        if change.stale_documents:
            console.print(f"{change.stale_documents} stored document(s) were screened under another version: ingest "
                          "or sync them again to apply this one", highlight=False)

    _set(path, data_dir, store)


@app.command("set-key")
def policy_set_key(key_id: Annotated[str, typer.Argument(help="An API key's id (`ragtune keys list`).")],
                   path: PolicyFile, data_dir: DataDir = None) -> None:
    """Check a policy file and make it an API key's next policy version (audited): its [pii] and
    [answers] rules are added to the collection's for every answer asked with the key."""
    def store(rt: Any, source: str) -> None:
        stored = rt.policies.set_key(key_id, source, Principal.system(), name=str(path))
        console.print(f"[green]policy version {stored.version}[/] of key {key_id} is in force", highlight=False)

    _set(path, data_dir, store)


def _set(path: Path, data_dir: Path | None, store: Callable[[Any, str], None]) -> None:
    """Read a policy file and store it with ``store``; its problems each on a line, exit code 1."""
    def body() -> None:
        source = _read(path)
        with engine(data_dir) as rt:
            try:
                store(rt, source)
            except PolicyError as exc:
                _problems(exc)
                raise typer.Exit(1) from None

    run_command(body)


@app.command("show")
def policy_show(collection: Collection,
                version: Annotated[int | None, typer.Option(min=1, help="An earlier version.")] = None,
                as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """The policy in force for a collection (or an earlier version), as written and as understood."""
    def body() -> None:
        with engine(data_dir) as rt:
            stored = rt.policies.show(collection, version)
        if stored is None:
            console.print(f"collection {collection!r} has no policy", highlight=False)
            return
        if as_json:
            console.print_json(json.dumps({"collection": stored.collection, "version": stored.version,
                                           "created_by": stored.created_by, "created_at": stored.created_at.isoformat(),
                                           "source": stored.source, "rules": stored.rules}))
            return
        console.print(f"[bold]{collection}[/] policy version {stored.version}, set by {stored.created_by} at "
                      f"{stored.created_at:%Y-%m-%d %H:%M:%S %Z}", highlight=False)
        console.print(escape(stored.source.strip()), highlight=False)

    run_command(body)


@app.command("history")
def policy_history(collection: Collection, as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Every version of a collection's policy, oldest first."""
    def body() -> None:
        with engine(data_dir) as rt:
            versions = rt.policies.history(collection)
        if as_json:
            console.print_json(json.dumps([{"version": p.version, "created_by": p.created_by,
                                            "created_at": p.created_at.isoformat(), "rules": p.rules}
                                           for p in versions]))
            return
        table = Table("version", "set by", "at", "PII types", "injection", "answers")
        for p in versions:
            answers = p.rules["answers"]
            table.add_row(str(p.version), p.created_by, f"{p.created_at:%Y-%m-%d %H:%M:%S}",
                          ", ".join(f"{e}={a}" for e, a in p.rules["pii"]["entities"].items()) or "-",
                          p.rules["injection"]["action"],
                          ", ".join(k for k in ("disclaimer", "max_sources", "generators", "blocked_topics")
                                    if answers.get(k)) or "-")
        console.print(table if versions else f"collection {collection!r} has no policy")

    run_command(body)


@app.command("entities")
def policy_entities() -> None:
    """The PII entity types a policy may name (Presidio's model-free recognizers and plugins'; those
    marked "NER tier" are found by a spaCy model, which the ner extra installs)."""
    def body() -> None:
        from ragtune.govern.pii import NER_ENTITIES, known_entities

        console.print("\n".join(f"{e}  (NER tier)" if e in NER_ENTITIES else e for e in known_entities()),
                      highlight=False)

    run_command(body)


def _print_rules(rules: dict[str, object]) -> None:
    console.print_json(json.dumps(rules))


@pii_app.command("scan")
def pii_scan(path: Annotated[Path, typer.Argument(help="A text file to look at.")],
             policy: Annotated[Path, typer.Option("--policy", "-p", help="The policy file whose [pii] rules apply.")],
             show: Annotated[bool, typer.Option(help="Print the text as the policy leaves it.")] = False,
             as_json: AsJson = False) -> None:
    """Find personal data in a text file as a policy would, and what the policy would do to it."""
    def body() -> None:
        from ragtune.govern.pii import apply_policy, known_entities
        from ragtune.govern.policy import parse_policy

        rules = parse_policy(_read(policy), name=str(policy), known_entities=known_entities)
        text = _read(path)
        screened = apply_policy(text, rules.pii)
        found = [{"entity": f.entity, "start": f.start, "end": f.end, "score": f.score,
                  "action": rules.pii.action(f.entity)} for f in screened.findings]
        if as_json:
            console.print_json(json.dumps({"findings": found, "refused": list(screened.refused),
                                           **({"text": screened.text} if show else {})}))
            return
        table = Table("entity", "where", "score", "action")
        for f in found:
            table.add_row(str(f["entity"]), f"{f['start']}-{f['end']}", f"{f['score']:.2f}", str(f["action"]))
        console.print(table if found else "no personal data of the policy's types found")
        if screened.refused:
            console.print(f"[bold red]refused[/]: {', '.join(screened.refused)}", highlight=False)
        elif show:
            console.print(escape(screened.text), highlight=False)

    run_command(body)


@pii_app.command("reveal")
def pii_reveal(token: Annotated[str, typer.Argument(help="A pseudonym, e.g. <EMAIL_ADDRESS_3f9a0c2e51b7>.")],
               data_dir: DataDir = None) -> None:
    """The value a pseudonym stands for (needs RAGTUNE_VAULT_KEY; audited as pii.reveal)."""
    def body() -> None:
        with engine(data_dir) as rt:
            console.print(escape(rt.reveal(token)), highlight=False)

    run_command(body)


@quarantine_app.command("list")
def quarantine_list(collection: Collection,
                    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many, highest score first.")] = 50,
                    as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """The chunks a collection's injection policy holds out of retrieval, with their text."""
    def body() -> None:
        with engine(data_dir) as rt:
            rows = rt.quarantined(collection, limit=limit)
        if as_json:
            console.print_json(json.dumps([{k: (round(v, 3) if k == "injection" else v) for k, v in r.items()}
                                           for r in rows]))
            return
        table = Table("chunk", "score", "document", "text")
        for r in rows:
            table.add_row(str(r["id"]), f"{r['injection']:.2f}", escape(r["uri"]), escape(r["body"][:160]))
        console.print(table if rows else f"no quarantined chunks in {collection!r}")

    run_command(body)


@quarantine_app.command("release")
def quarantine_release(collection: Collection,
                       chunks: Annotated[list[int], typer.Argument(help="Chunk ids (from quarantine list).")],
                       data_dir: DataDir = None) -> None:
    """Return quarantined chunks to retrieval (audited; they stay released through re-ingests)."""
    def body() -> None:
        with engine(data_dir) as rt:
            n = rt.release(collection, chunks)
        console.print(f"released {n} chunk(s) of {collection!r}", highlight=False)

    run_command(body)
