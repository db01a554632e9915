"""``ragtune traces list|show``: what each search and answer did, read as the principal asking.

A trace row holds the query, the parameters, the ranked chunks with their scores and the stage
timings; an answer's trace also holds the rendered prompt and the response (``observe/traces.py``).
The list shows one short line per trace; ``show`` draws one trace whole, prompt included.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ragtune.cli.common import (
    AsGroupOpt,
    AsJson,
    AsUserOpt,
    DataDir,
    console,
    engine,
    reader,
    run_command,
)

app = typer.Typer()  # traces list|show|prune
feedback_app = typer.Typer()  # ragtune feedback
stats_app = typer.Typer()  # ragtune stats

# A search times its steps inside "retrieve" and copies "retrieve" as "search"
# (``retrieve/searcher.py``); an answer's stages are all top level. So a trace's total is the sum
# of its top-level stages, and the tree draws the steps under the stage they ran in.
NESTED_STAGES = {"retrieve": ("count", "dense", "bm25", "fuse", "fill", "fetch")}
ALIAS_STAGES = frozenset({"search"})
# the order stages run in (the database returns a JSON object's keys in its own order)
STAGE_ORDER = ("embed", "retrieve", "count", "dense", "bm25", "fuse", "fill", "fetch", "prompt", "support",
               "answerability", "generate", "grounding")
# parameters an answer's trace holds that the tree draws on their own, not on the parameters line
DRAWN_APART = ("prompt", "response", "sentences")
QUESTION_CHARS = 60
AsObserverOpt = Annotated[bool, typer.Option(
    "--as-observer", help="With --as-user/--as-group: read as an observer (a key with the observe scope): every "
                          "trace, the text of chunks outside those groups redacted.")]
SHORT_ID = 12  # hex digits of a trace id the list shows; `traces show` takes any prefix of 8 or more


@app.command("list")
def traces_list(
    limit: Annotated[int, typer.Option(min=1, help="How many traces, newest first.")] = 10,
    kind: Annotated[str | None, typer.Option(
        help="Only traces of this kind: search, ask, ingest, job (a server's ingest or sync job), train, "
             "evaluation or tune-search.")] = None,
    collection: Annotated[str | None, typer.Option(
        "--collection", "-c", help="Only traces of this collection.")] = None,
    feedback: Annotated[str | None, typer.Option(
        "--feedback", help="Only answers with feedback: any, negative (thumbs down or score under 0.5) or "
                           "positive.")] = None,
    since_hours: Annotated[float | None, typer.Option(
        "--since-hours", min=0.0, help="Only traces of the last this many hours (168: this week).")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only traces of this user (a key's is key:ID).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Only answers by this model.")] = None,
    slower_than_ms: Annotated[float | None, typer.Option(
        "--slower-than-ms", min=0.0, help="Only requests that took longer.")] = None,
    abstained: Annotated[bool | None, typer.Option(
        "--abstained/--answered", help="Only answers that abstained, or only those that answered.")] = None,
    grounded: Annotated[bool | None, typer.Option(
        "--grounded/--ungrounded", help="Only grounded answers, or only those not fully grounded.")] = None,
    as_observer: AsObserverOpt = False,
    as_json: AsJson = False,
    as_user: AsUserOpt = None,
    as_group: AsGroupOpt = None,
    data_dir: DataDir = None,
) -> None:
    """List the most recent traces the principal may see, one line each (with --json: whole rows,
    prompts included)."""
    def body() -> None:
        with engine(data_dir) as rt:
            since = None if since_hours is None else datetime.now(UTC) - timedelta(hours=since_hours)
            rows = rt.traces.visible(reader(as_user, as_group), kind=kind, collection=collection, feedback=feedback,
                                     since=since, user=user, model=model, slower_than_ms=slower_than_ms,
                                     abstained=abstained, grounded=grounded, observer=as_observer, limit=limit)
        if as_json:
            print(json.dumps(rows, default=str, indent=2))
            return
        # no vertical rules and only the question may wrap: the line stays readable at 80 columns
        table = Table(title=f"{len(rows)} trace(s), newest first", box=box.SIMPLE_HEAD, title_justify="left",
                      expand=True, pad_edge=False)
        for col in ("id", "time", "kind", "collection", "question", "hits", "outcome", "ms"):
            table.add_column(col, justify="right" if col in ("id", "hits", "ms") else "left",
                             no_wrap=col != "question", overflow="ellipsis" if col == "collection" else "fold",
                             ratio=1 if col == "question" else None)
        for row in rows:
            table.add_row(str(row["id"])[:SHORT_ID], _time(row)[5:], row["kind"], Text(row["collection"] or "-"),
                          Text(_shorten(row["query"] or "", QUESTION_CHARS)), str(len(_results(row))),
                          _outcome(row), f"{total_ms(row['timings_ms']):.0f}")
        console.print(table)
        if rows:
            console.print("details of one: ragtune traces show ID", highlight=False)

    run_command(body)


@app.command("show")
def traces_show(
    trace_id: Annotated[str, typer.Argument(help="The trace's id (32 hex digits) or a prefix of 8 or more, as "
                                                 "traces list shows it.")],
    as_observer: AsObserverOpt = False,
    as_json: AsJson = False,
    as_user: AsUserOpt = None,
    as_group: AsGroupOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Show one trace as a tree: the question, parameters, stage timings, sources (rank, URI,
    score) and, for an answer, the prompt and the response."""
    def body() -> None:
        principal = reader(as_user, as_group)
        with engine(data_dir) as rt:
            # a hidden trace is "no trace N", like a missing one
            row = rt.trace(trace_id, principal=principal, observer=as_observer)
            ids = [r["chunk_id"] for r in _results(row) if isinstance(r.get("chunk_id"), int)]
            # a search's trace keeps chunk ids only: their URIs are read now, as the same principal
            uris = {c["chunk_id"]: c["uri"] for c in rt.repo.readable_chunks(ids, principal)} if ids else {}
        if as_json:
            print(json.dumps(row, default=str, indent=2))
            return
        console.print(trace_tree(row, uris))

    run_command(body)


@feedback_app.command("feedback")
def feedback_command(
    response_id: Annotated[str, typer.Argument(help="The answer's trace id (ask --json shows it), or a non-streamed "
                                                    "completion's chatcmpl- id.")],
    up: Annotated[bool | None, typer.Option("--up/--down", help="Thumbs up or down.")] = None,
    score: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="A score from 0 to 1.")] = None,
    label: Annotated[str | None, typer.Option(help="A label (wrong-source, outdated, ...).")] = None,
    comment: Annotated[str | None, typer.Option(help="What was wrong or right.")] = None,
    correction: Annotated[str | None, typer.Option(help="The answer it should have been.")] = None,
    as_user: AsUserOpt = None,
    as_group: AsGroupOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Give feedback on an answer: thumbs, a score, a label, a comment, a corrected answer. Stored with
    its trace (`traces show`, `traces list --feedback negative`) and sent as an evaluation event."""
    def body() -> None:
        with engine(data_dir) as rt:
            row = rt.feedback(response_id, principal=reader(as_user, as_group),
                              thumbs=None if up is None else (1 if up else -1), score=score, label=label,
                              comment=comment, correction=correction)
        console.print(f"feedback {row['id']} on answer {row['trace_id']} stored", highlight=False)

    run_command(body)


@stats_app.command("stats")
def stats_command(
    since_hours: Annotated[float, typer.Option("--since-hours", min=0.0, help="Over the last this many hours.")] = 24,
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Only this collection.")] = None,
    as_json: AsJson = False,
    as_user: AsUserOpt = None,
    as_group: AsGroupOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Requests, p50/p95 per stage, tokens, abstention and groundedness rates and feedback over a
    window of the traces (as the principal asking may see them)."""
    def body() -> None:
        with engine(data_dir) as rt:
            out = rt.traces.stats(reader(as_user, as_group), since=datetime.now(UTC) - timedelta(hours=since_hours),
                                  collection=collection)
        if as_json:
            print(json.dumps(out, default=str, indent=2))
            return
        console.print(stats_tables(out, since_hours))

    run_command(body)


def stats_tables(out: dict[str, Any], hours: float) -> Group:
    """``TraceReader.stats`` as two tables and a summary line."""
    requests = Table(title=f"requests, last {hours:g} h", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("kind", "requests", "p50 ms", "p95 ms"):
        requests.add_column(col, justify="left" if col == "kind" else "right")
    for kind, r in out["requests"].items():
        requests.add_row(kind, str(r["requests"]), f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}")
    stages = Table(title="stages", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("stage", "spans", "p50 ms", "p95 ms"):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    for r in out["stages"]:
        stages.add_row(r["stage"], str(r["spans"]), f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}")

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    fb = out["feedback"]
    summary = Text(f"answers abstained {rate(out['abstention_rate'])}, grounded {rate(out['groundedness_rate'])}; "
                   f"tokens in {out['tokens']['input']}, out {out['tokens']['output']}; feedback "
                   f"{fb['total']} ({fb['negative']} negative, {fb['positive']} positive)")
    return Group(requests, stages, summary)


@app.command("prune")
def traces_prune(
    days: Annotated[int | None, typer.Option(
        "--days", min=1, help="Keep this many days of spans, today's included (default: [observability] "
                              "retention_days).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Drop the spans of older days, a whole day's partition at a time."""
    def body() -> None:
        with engine(data_dir) as rt:
            dropped = rt.prune_traces(days)
            kept = days or rt.settings.observability.retention_days
        console.print(f"dropped {len(dropped)} day(s) of spans older than {kept} day(s)"
                      + (f": {', '.join(dropped)}" if dropped else ""), highlight=False)

    run_command(body)


def trace_tree(row: dict[str, Any], uris: dict[int, str]) -> Tree:
    """A trace row (``TraceWriter.get``) as a tree; ``uris`` names the chunks a search's results hold.
    Every text from the trace is a ``Text``: a query or prompt with brackets is not markup."""
    params = row["params"] if isinstance(row["params"], dict) else {}
    groups = ",".join(row.get("groups") or []) or "no groups"
    tree = Tree(Text.assemble((f"trace {row['id']}", "bold"),
                              f"  {row['kind']} · collection {row['collection'] or '-'} · {_time(row)}"
                              f" · by {row['principal']} ({groups})"))
    if row["kind"] not in ("search", "ask"):  # a run (ingest, job, train, evaluation): its spans
        _add_spans(tree, row.get("spans") or [])
        if row.get("error"):
            tree.add(Text(f"error: {row['error']}", style="red"))
        return tree
    tree.add(Text(f"{'question' if row['kind'] == 'ask' else 'query'}: {row['query'] or ''}"))
    shown = {k: v for k, v in params.items() if k not in DRAWN_APART and v is not None}
    if shown:
        tree.add(Text("parameters: " + ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in shown.items())))
    _add_stages(tree, row["timings_ms"] if isinstance(row["timings_ms"], dict) else {})
    _add_sources(tree, _results(row), uris)
    prompt = params.get("prompt")
    if isinstance(prompt, list) and prompt:
        branch = tree.add(Text(f"prompt ({len(prompt)} message(s))", style="bold"))
        for message in prompt:
            branch.add(Text(str(message.get("role", "?")), style="italic")).add(Text(str(message.get("content", ""))))
    if row["kind"] == "ask":
        tree.add(Text(f"answer ({_outcome(row)}): {params.get('response') or ''}"))
    for given in row.get("feedback") or []:
        thumbs = {1: "thumbs up", -1: "thumbs down"}.get(given.get("thumbs") or 0)
        parts = [p for p in (thumbs, None if given.get("score") is None else f"score {given['score']:g}",
                             given.get("label"), given.get("comment"),
                             given.get("correction") and f"should be: {given['correction']}") if p]
        tree.add(Text(f"feedback from {given['principal']}: " + "; ".join(parts)))
    if row.get("error"):
        tree.add(Text(f"error: {row['error']}", style="red"))
    return tree


# shown with a run's span: what it did (numbers and short names), not who ran it or where it is stored
_SPAN_FACTS = ("ragtune.train.", "ragtune.eval.", "ragtune.evaluation.", "ragtune.job.", "ragtune.ingest.",
               "ragtune.run_id", "ragtune.dataset", "ragtune.trials")
_SHOWN_CHILDREN = 12  # of one name under one span; the rest are counted


def _add_spans(tree: Tree, spans: list[dict[str, Any]]) -> None:
    """A run's spans as a tree under their parents, each with its duration and facts; past
    ``_SHOWN_CHILDREN`` spans of one name under one parent (an evaluation's searches) are counted."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in spans}
    for span in spans:
        parent = span["parent_id"] if span["parent_id"] in ids else None
        children.setdefault(parent, []).append(span)

    def add(node: Tree, span: dict[str, Any]) -> None:
        given = span.get("attributes")
        attributes: dict[str, Any] = given if isinstance(given, dict) else {}
        facts = [f"{k.removeprefix('ragtune.')}={_fact(v)}" for k, v in sorted(attributes.items())
                 if k.startswith(_SPAN_FACTS) and isinstance(v, int | float | str) and not isinstance(v, bool)]
        label = f"{span['name']}  {span['duration_ms']:.1f} ms" + ("  error" if span.get("status") == "error" else "")
        branch = node.add(Text(label + ("  " + ", ".join(facts) if facts else "")))
        shown: dict[str, int] = {}
        for child in children.get(span["span_id"], []):
            shown[child["name"]] = shown.get(child["name"], 0) + 1
            if shown[child["name"]] <= _SHOWN_CHILDREN:
                add(branch, child)
        for name, count in shown.items():
            if count > _SHOWN_CHILDREN:
                branch.add(Text(f"… and {count - _SHOWN_CHILDREN} more {name} spans", style="italic"))

    branch = tree.add(Text(f"spans ({len(spans)})", style="bold"))
    for root in children.get(None, []):
        add(branch, root)


def _fact(value: int | float | str) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return _shorten(str(value), 60)


def total_ms(timings: Any) -> float:
    """A trace's wall time: the sum of its top-level stages (see ``NESTED_STAGES``)."""
    if not isinstance(timings, dict):
        return 0.0
    nested = {step for steps in NESTED_STAGES.values() for step in steps}
    return float(sum(v for k, v in timings.items() if k not in nested and k not in ALIAS_STAGES))


def _add_stages(tree: Tree, timings: dict[str, float]) -> None:
    branch = tree.add(Text(f"stages ({total_ms(timings):.1f} ms)", style="bold"))
    nested = {step for steps in NESTED_STAGES.values() for step in steps}
    for stage in _ordered(k for k in timings if k not in nested and k not in ALIAS_STAGES):
        node = branch.add(Text(f"{stage} {timings[stage]:.1f} ms"))
        for step in _ordered(s for s in NESTED_STAGES.get(stage, ()) if s in timings):
            node.add(Text(f"{step} {timings[step]:.1f} ms"))


def _add_sources(tree: Tree, results: list[dict[str, Any]], uris: dict[int, str]) -> None:
    branch = tree.add(Text(f"sources ({len(results)})", style="bold"))
    for r in results:
        rank = r.get("rank", r.get("number", "?"))
        uri = r.get("uri") or uris.get(r.get("chunk_id", -1)) or f"chunk {r.get('chunk_id')} (since deleted)"
        score = r.get("score")
        line = f"#{rank} {uri}  score {score:.4g}" if isinstance(score, int | float) else f"#{rank} {uri}"
        by_source = r.get("scores") if isinstance(r.get("scores"), dict) else {}
        if by_source:
            line += " (" + ", ".join(f"{k} {v:.4g}" for k, v in by_source.items() if isinstance(v, int | float)) + ")"
        if r.get("cited"):
            line += "  cited"
        branch.add(Text(line))


def _ordered(names: Any) -> list[str]:
    """Stage names in the order they run; unknown ones after, by name."""
    return sorted(names, key=lambda n: (STAGE_ORDER.index(n) if n in STAGE_ORDER else len(STAGE_ORDER), n))


def _results(row: dict[str, Any]) -> list[dict[str, Any]]:
    results = row.get("results")
    return [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []


def _outcome(row: dict[str, Any]) -> str:
    """What an answer came to (abstained, grounded, not grounded); a search has none."""
    if row.get("error"):
        return "error"
    if row["kind"] != "ask":
        return "-"
    params = row["params"] if isinstance(row["params"], dict) else {}
    if params.get("abstained"):
        return "abstained"
    return "grounded" if params.get("grounded") else "ungrounded"


def _time(row: dict[str, Any]) -> str:
    return str(row["created_at"])[:19]  # to the second, without the zone


def _shorten(text: str, chars: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[:chars - 1] + "…"
