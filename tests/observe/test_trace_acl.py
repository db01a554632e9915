"""The traces' access rule as a property (issue 19): whoever asks what, a non-admin viewer — as
itself or as an observer — never sees the text of a chunk it may not read, through the trace list,
one trace, the stats or the series; and spans sent to a collector without ``export_content`` hold
no document or question text at all. Real PostgreSQL, the real embedder, extractive answers; the
collector is the SDK's own in-memory exporter behind the same wrapper the OTLP exporter gets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragtune import LoadedDocument, Principal
from ragtune.engine import Ragtune
from tests.helpers import database_from_template

GROUPS = ("a", "b", "c")
# one document per group and a public one, each with a marker no other text holds
DOCS = {group: f"The zorblax ledger of team {group} keeps the code qx{group}{group}7 in its vault."
        for group in (*GROUPS, "public")}
QUESTIONS = ("Which code does the zorblax ledger keep?", "Where is the ledger's vault?", "What does team a keep?")


def _marker(group: str) -> str:
    return f"qx{group}{group}7"


@pytest.fixture(scope="module")
def engine(pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path,
           embedder: Any) -> Iterator[Ragtune]:
    from ragtune.settings import Settings

    with database_from_template(pg_admin_url, template_db, "acl_") as url:
        rt = Ragtune(Settings.of(database_url=url, cache_dir=cache_dir, data_dir=tmp_path_factory.mktemp("acl")),
                     embedder=embedder)
        for group, text in DOCS.items():
            rt.ingest_documents([LoadedDocument(uri=f"{group}.md", text=text)], collection="ledger",
                                acl=[] if group == "public" else [group])
        try:
            yield rt
        finally:
            rt.close()


groups = st.frozensets(st.sampled_from(GROUPS), max_size=2)
requests = st.lists(st.tuples(groups, st.sampled_from(QUESTIONS), st.sampled_from(("ask", "search"))),
                    min_size=1, max_size=3)


def _unreadable(viewer_groups: frozenset[str]) -> list[str]:
    return [_marker(g) for g in GROUPS if g not in viewer_groups]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(asked=requests, viewer=groups, observer=st.booleans())
def test_no_viewer_sees_text_it_may_not_read(engine: Ragtune, asked: list[Any], viewer: frozenset[str],
                                             observer: bool) -> None:
    me = Principal("viewer", viewer)
    # the viewer asks too: its own trace is whole (it could read what it was shown)
    made = [engine.ask(QUESTIONS[0], collection="ledger", generator="extractive", principal=me).trace_id]
    for i, (who, question, kind) in enumerate(asked):
        principal = Principal(f"asker-{'-'.join(sorted(who)) or 'none'}-{i % 2}", who)
        if kind == "ask":
            made.append(engine.ask(question, collection="ledger", generator="extractive", principal=principal).trace_id)
        else:
            made.append(engine.search(question, collection="ledger", principal=principal).trace_id)
    since = datetime.now(UTC) - timedelta(hours=1)
    views: list[Any] = [engine.traces.visible(me, observer=observer, limit=200)]
    listed = {t["id"] for t in views[0]}
    for trace_id in made:
        if trace_id in listed:
            views.append(engine.traces.get(trace_id, me, observer=observer))
    views.append(engine.traces.stats(me, since=since, observer=observer))
    views.append(engine.traces.series(me, since=since, observer=observer))
    text = json.dumps(views, default=str)
    for marker in _unreadable(viewer):
        assert marker not in text, (marker, viewer, observer)
    # the rule, not only the redaction: without observe only the viewer's own traces are listed
    if not observer:
        assert all(t["principal"] == "viewer" for t in views[0]) and made[0] in listed
    else:
        assert set(made) <= listed  # an observer sees every trace


class _Keep:
    """A span processor that keeps each ended span, to export them as a batch would."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    def on_end(self, span: Any) -> None:
        self.spans.append(span)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


@pytest.fixture(scope="module")
def kept(engine: Ragtune) -> _Keep:
    keep = _Keep()
    engine.tracing.add_processor(keep)
    return keep


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(asked=requests)
def test_spans_sent_without_content_hold_no_text(engine: Ragtune, kept: _Keep, asked: list[Any]) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ragtune.observe.tracing import _ForCollector, expand  # the wrapper the OTLP exporter gets

    kept.spans.clear()
    collected = InMemorySpanExporter()
    for who, question, kind in asked:
        principal = Principal("asker", who)
        if kind == "ask":
            engine.ask(question, collection="ledger", generator="extractive", principal=principal)
        else:
            engine.search(question, collection="ledger", principal=principal)
    _ForCollector(collected, content=False).export(kept.spans)
    sent = collected.get_finished_spans()
    assert len(sent) == sum(len(expand(s)) for s in kept.spans) > 0  # every span and step went
    text = json.dumps([{"name": s.name, **dict(s.attributes or {})} for s in sent], default=str)
    for group in (*GROUPS, "public"):
        assert _marker(group) not in text
    for question in QUESTIONS:
        assert question not in text
    # and with export_content the same spans do carry them: the check above can fail
    shown = InMemorySpanExporter()
    _ForCollector(shown, content=True).export(kept.spans)
    assert any(q in json.dumps([dict(s.attributes or {}) for s in shown.get_finished_spans()], default=str)
               for q in QUESTIONS)
