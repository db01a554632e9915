"""Small real helpers for tests (no mocks): an embedder wrapper that counts calls, a progress
receiver that keeps the events it gets, and consistency checks of the lexical index against a
recomputation from scratch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ragtune.models import ProgressEvent
from ragtune.store.repository import BLOCK_BITS


class CountingEmbedder:
    """Delegates to a real embedder and counts how many texts it was asked to embed."""

    def __init__(self, inner: Any, name: str | None = None) -> None:
        self.inner = inner
        self.name = name or inner.name
        self.dimension = inner.dimension
        self.tokenizer = inner.tokenizer
        self.max_seq_length = inner.max_seq_length
        self.texts = 0
        self.calls = 0

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.texts += len(texts)
        return self.inner.embed_batch(texts)


class ProgressRecorder:
    """A ``ragtune.protocols.Progress`` that keeps every event, in arrival order, from any thread."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, task: str) -> list[ProgressEvent]:
        return [e for e in self.events if e.task == task]

    def last(self, task: str) -> ProgressEvent:
        return self.of(task)[-1]

    def assert_monotone(self) -> None:
        """Each task's ``done`` never goes down and never passes its ``total``."""
        for task in {e.task for e in self.events}:
            done = [e.done for e in self.of(task)]
            assert done == sorted(done), (task, done)
            assert all(e.total is None or e.done <= e.total for e in self.of(task)), (task, self.of(task))


def check_index_consistency(rt: Any) -> None:
    """BM25 statistics kept incrementally must equal a recomputation from the rows themselves."""
    with rt.db.connection() as conn:
        bad_df = conn.execute(
            "SELECT t.term, t.df, coalesce(p.n, 0) AS actual FROM terms t"
            " LEFT JOIN (SELECT term_id, count(*) AS n FROM postings GROUP BY term_id) p ON p.term_id = t.id"
            " WHERE t.df <> coalesce(p.n, 0) LIMIT 5"
        ).fetchall()
        assert bad_df == [], f"document frequencies drifted: {bad_df}"
        stats = conn.execute(
            "SELECT c.name, c.n_chunks, c.total_len, count(k.id) AS n, coalesce(sum(k.lex_len), 0) AS len"
            " FROM collections c LEFT JOIN chunks k ON k.collection_id = c.id GROUP BY c.id"
        ).fetchall()
        for row in stats:
            assert row["n_chunks"] == row["n"], row
            assert row["total_len"] == row["len"], row
        orphans = conn.execute(
            "SELECT count(*) AS n FROM postings p LEFT JOIN chunks c ON c.id = p.chunk_id WHERE c.id IS NULL"
        ).fetchone()
        assert orphans["n"] == 0
        # every packed block holds exactly the postings of its (term, chunk-id range), none elsewhere
        unpacked = (
            f"SELECT b.term_id, (b.block::bigint << {BLOCK_BITS})"
            "  + ('x' || encode(substring(b.postings FROM 12 * i + 1 FOR 4), 'hex'))::bit(32)::int AS chunk_id,"
            " ('x' || encode(substring(b.postings FROM 12 * i + 5 FOR 4), 'hex'))::bit(32)::int AS tf,"
            " ('x' || encode(substring(b.postings FROM 12 * i + 9 FOR 4), 'hex'))::bit(32)::int AS dl"
            " FROM posting_blocks b, generate_series(0, length(b.postings) / 12 - 1) AS i"
        )
        differ = conn.execute(
            f"SELECT count(*) AS n FROM (({unpacked} EXCEPT ALL SELECT term_id, chunk_id, tf, dl FROM postings)"
            f" UNION ALL (SELECT term_id, chunk_id, tf, dl FROM postings EXCEPT ALL {unpacked})) x"
        ).fetchone()
        assert differ["n"] == 0, f"{differ['n']} postings differ between posting_blocks and postings"
        bad_length = conn.execute("SELECT count(*) AS n FROM posting_blocks WHERE length(postings) % 12 <> 0"
                                  " OR length(postings) = 0").fetchone()
        assert bad_length["n"] == 0
        # the same statistics per ACL class (migration 007): one class per distinct stored ACL of a
        # collection's chunks, none empty, and per class the df of every term it holds
        classes = conn.execute(
            "SELECT k.collection_id, k.acl, k.n_chunks, k.total_len, x.n, x.len FROM acl_classes k FULL JOIN"
            " (SELECT collection_id, acl, count(*) AS n, sum(lex_len) AS len FROM chunks GROUP BY 1, 2) x"
            " ON x.collection_id = k.collection_id AND x.acl = k.acl"
            " WHERE k.n_chunks IS DISTINCT FROM x.n OR k.total_len IS DISTINCT FROM x.len LIMIT 5"
        ).fetchall()
        assert classes == [], f"ACL class counts drifted: {classes}"
        class_df = conn.execute(
            "SELECT coalesce(s.class_id, r.class_id) AS class_id, coalesce(s.term_id, r.term_id) AS term_id,"
            " s.df AS stored, r.df AS actual FROM (SELECT * FROM acl_class_terms WHERE df <> 0) s FULL JOIN"
            " (SELECT k.id AS class_id, p.term_id, count(*) AS df FROM postings p JOIN chunks c ON c.id = p.chunk_id"
            "  JOIN acl_classes k ON k.collection_id = c.collection_id AND k.acl = c.acl GROUP BY 1, 2) r"
            " ON r.class_id = s.class_id AND r.term_id = s.term_id WHERE s.df IS DISTINCT FROM r.df LIMIT 5"
        ).fetchall()
        assert class_df == [], f"ACL class document frequencies drifted: {class_df}"
        foreign = conn.execute(
            "SELECT count(*) AS n FROM acl_class_terms x JOIN acl_classes k ON k.id = x.class_id"
            " JOIN terms t ON t.id = x.term_id WHERE t.collection_id <> k.collection_id").fetchone()
        assert foreign["n"] == 0, "ACL class rows point at another collection's terms"
        empty_docs = conn.execute(  # only a near-duplicate linked to its original has none
            "SELECT d.uri FROM documents d WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.document_id = d.id)"
            " AND d.duplicate_of IS NULL"
        ).fetchall()
        assert empty_docs == [], f"documents without chunks: {empty_docs}"
        dangling = conn.execute(
            "SELECT d.uri, d.duplicate_of FROM documents d WHERE d.duplicate_of IS NOT NULL AND (EXISTS"
            " (SELECT 1 FROM chunks c WHERE c.document_id = d.id) OR NOT EXISTS (SELECT 1 FROM documents o"
            " WHERE o.collection_id = d.collection_id AND o.uri = d.duplicate_of) AND d.content_hash <> '')"
        ).fetchall()
        assert dangling == [], f"linked copies with chunks, or whose original is gone unmarked: {dangling}"


@contextmanager
def database_from_template(admin_url: str, template: str, prefix: str = "t_") -> Iterator[str]:
    """A fresh database copied from the migrated template; dropped (forcibly) afterwards."""
    import uuid

    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield make_conninfo(admin_url, dbname=name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- a reader trained small, on a synthetic task it can learn in seconds ----------------------------
PEOPLE = ["Ada Brook", "Bruno Vale", "Celia Marsh", "Dario Quill", "Elin Frost", "Farid Oakes", "Greta Lund",
          "Hugo Pell", "Ines Roth", "Jonas Weir", "Kira Holm", "Luca Brandt", "Mira Sokol", "Nils Arden",
          "Olga Vance", "Piet Maren", "Rosa Linde", "Sven Adler", "Tara Kell", "Ugo Ferri", "Vera Stahl",
          "Wim Decker", "Xena Pruitt", "Yuri Bolt"]
CITIES = ["Lisbon", "Tromso", "Ghent", "Padua", "Kaunas", "Bergen", "Leipzig", "Cork", "Graz", "Turku",
          "Nantes", "Split"]
JOBS = ["a baker", "a pilot", "a surgeon", "a carpenter", "a chemist", "a sculptor"]


def person_fact(i: int) -> tuple[str, str, str, str]:
    """(name, city, job, paragraph) of synthetic person ``i``."""
    name, city, job = PEOPLE[i % len(PEOPLE)], CITIES[(i * 5) % len(CITIES)], JOBS[(i * 7) % len(JOBS)]
    return name, city, job, f"{name} was born in {city} in a small house. Later {name} worked as {job} for years."


def tiny_reader_examples(people: range) -> list[Any]:
    from ragtune.finetune.reader import ReaderExample

    rows = []
    for i in people:
        name, city, job, text = person_fact(i)
        rows.append(ReaderExample(f"Where was {name} born?", text, text.index(city), city, group=name))
        rows.append(ReaderExample(f"What did {name} work as?", text, text.index(job), job, group=name))
        rows.append(ReaderExample(f"When did {name} die?", text, None, "", group=name))
        other = person_fact(i + 1)[3]
        rows.append(ReaderExample(f"Where was {name} born?", other, None, "", group=name))
    return rows


def train_tiny_reader(data_dir: Any, steps: int = 40) -> Any:
    """A reader trained on 16 synthetic people (the last 8 are held out for tests), calibrated on
    questions about held-out people: with answers, without, and about nobody in the passages."""
    from ragtune.finetune.reader import CalibrationQuestion, train_reader
    from ragtune.generate.reader import reader_store

    calibration = []
    for i in range(16, 24):
        name, city, _, text = person_fact(i)
        # supports as real questions have them (grounding.SupportScorer): about 0.3 and up when the
        # passage is on the subject, far less when it is not
        calibration.append(CalibrationQuestion(f"Where was {name} born?", [text], 0.3, [city]))
        calibration.append(CalibrationQuestion(f"When did {name} die?", [text], 0.28, []))
        calibration.append(CalibrationQuestion("What is the boiling point of tungsten?", [text], 0.05, [], "out"))
    return train_reader(tiny_reader_examples(range(16)), reader_store(data_dir), calibration=calibration,
                        max_steps=steps, batch_size=8, learning_rate=3e-4, max_length=64, stride=16,
                        warmup_ratio=0.1, source="tests.helpers.tiny_reader_examples")


def random_lora_adapter(folder: Any, cache_dir: Any) -> Any:
    """A real PEFT LoRA adapter for the packaged SmolLM2 saved in ``folder``, its weights drawn at
    random (seed 0), not trained: for tests of what is recorded and served, not what it learnt."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.generate.local import packaged_smollm2

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(packaged_smollm2(cache_dir)))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(folder))
    return folder


def adapter_sha256(folder: Any) -> str:
    """A PEFT adapter's content hash worked out here, as ``generate.lineage`` documents it: sha256
    over ``adapter_config.json``, ``adapter_model.safetensors`` and, where present,
    ``chat_template.jinja`` and ``ragtune_prompt.json``, each its name, a NUL byte and its bytes,
    in name order (other files do not count)."""
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256()
    names = ("adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "ragtune_prompt.json")
    for name in sorted(n for n in names if (Path(folder) / n).is_file()):
        digest.update(name.encode() + b"\0" + (Path(folder) / name).read_bytes())
    return digest.hexdigest()
