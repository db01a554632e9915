"""A property test over sequences of ingest, sync, re-upload and edit (issue 14, the blocker): every
document keeps its ACL and given metadata unless a write gives new ones, an ACL changes only when
asked for, a new file inherits its folder's, and an anonymous search never returns a document the
model says is restricted. Hypothesis drives the real engine (files on disk) and the real server's
uploads (an admin key, the asynchronous job path) side by side against a plain model."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from ragtune.models import Principal

pytestmark = pytest.mark.slow

FILES = ("x.md", "y.md", "sub/z.md")
UPLOADS = ("u1.md", "u2.md")
ACLS = st.sampled_from([None, (), ("hr",), ("eng",)])
METAS = st.sampled_from([None, {"team": "x"}, {"team": "y", "year": 2027}])
WORD = "zanzibar"  # in every text: an anonymous search for it must return public documents only


@dataclass
class Doc:
    acl: tuple[str, ...]
    meta: dict[str, Any]
    text: str


@dataclass
class Model:
    docs: dict[str, Doc] = field(default_factory=dict)  # by URI

    def folder_attrs(self, folder: str) -> list[Doc]:
        return [d for uri, d in self.docs.items() if str(Path(uri).parent) == folder]

    def inherited(self, uri: str, root: str, want_acl: bool) -> tuple[tuple[str, ...] | None, dict[str, Any]]:
        """What a new file takes (None: refused), from the documents stored before the run."""
        folder = str(Path(uri).parent)
        while True:
            found = self.folder_attrs(folder)
            if found:
                break
            if folder == root or str(Path(folder).parent) == folder:
                return (), {}
            folder = str(Path(folder).parent)
        acls = {d.acl for d in found}
        shared = dict(found[0].meta)
        for d in found[1:]:
            shared = {k: v for k, v in shared.items() if d.meta.get(k, object()) == v}
        if len(acls) > 1 and want_acl:
            return None, shared
        return (next(iter(acls)) if len(acls) == 1 else ()), shared

    def write(self, updates: dict[str, str], *, acl: tuple[str, ...] | None, meta: dict[str, Any] | None,
              change_acl: bool, inherit_root: str | None) -> None:
        before = Model({k: Doc(v.acl, dict(v.meta), v.text) for k, v in self.docs.items()})
        for uri, text in updates.items():
            old = self.docs.get(uri)
            if old is not None:
                target = old.acl if acl is None else tuple(sorted(acl))
                if target != old.acl and not change_acl:
                    continue  # refused: nothing of it changes
                self.docs[uri] = Doc(target, old.meta if meta is None else dict(meta), text)
                continue
            new_acl, new_meta = tuple(sorted(acl)) if acl is not None else (), dict(meta or {})
            if inherit_root is not None and (acl is None or meta is None):
                inherited_acl, inherited_meta = before.inherited(uri, inherit_root, acl is None)
                if inherited_acl is None:
                    continue  # refused: the folder's documents disagree on the ACL
                new_acl = new_acl if acl is not None else inherited_acl
                new_meta = new_meta if meta is not None else inherited_meta
            self.docs[uri] = Doc(new_acl, new_meta, text)


class AclMachine(RuleBasedStateMachine):
    def __init__(self, engine: Any, live_url: str, admin_key: str) -> None:
        super().__init__()
        self.engine = engine
        self.collection = f"prop-{uuid.uuid4().hex[:10]}"
        self.root = Path(tempfile.mkdtemp(prefix="ragtune-acl-")).resolve()
        (self.root / "sub").mkdir()
        self.versions: dict[str, int] = {}
        self.model = Model()
        self.client = httpx.Client(base_url=live_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=90)
        self.client.post("/collections", json={"name": self.collection}).raise_for_status()

    def teardown(self) -> None:
        self.client.close()
        shutil.rmtree(self.root, ignore_errors=True)
        self.engine.drop_collection(self.collection)

    def _text(self, name: str) -> str:
        return f"{name} version {self.versions.get(name, 0)} mentions {WORD} and the {name[0]} project."

    def _on_disk(self) -> dict[str, str]:
        return {str(self.root / f): (self.root / f).read_text() for f in FILES if (self.root / f).exists()}

    @rule(name=st.sampled_from(FILES))
    def edit(self, name: str) -> None:
        self.versions[name] = self.versions.get(name, 0) + 1
        (self.root / name).write_text(self._text(name))

    @rule(name=st.sampled_from(FILES))
    def remove_file(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    @rule(name=st.sampled_from(FILES), acl=ACLS, meta=METAS, change=st.booleans())
    def ingest_one(self, name: str, acl: Any, meta: Any, change: bool) -> None:
        path = self.root / name
        if not path.exists():
            return
        self.engine.ingest([path], collection=self.collection, acl=acl, metadata=meta, change_acl=change)
        self.model.write({str(path): path.read_text()}, acl=acl, meta=meta, change_acl=change,
                         inherit_root=str(path.parent))

    @rule(acl=ACLS, meta=METAS, change=st.booleans(), sync=st.booleans())
    def ingest_folder(self, acl: Any, meta: Any, change: bool, sync: bool) -> None:
        files = self._on_disk()
        if not files:
            return
        run = self.engine.sync if sync else self.engine.ingest
        run(self.root, collection=self.collection, acl=acl, metadata=meta, change_acl=change)
        self.model.write(files, acl=acl, meta=meta, change_acl=change, inherit_root=str(self.root))
        if sync:
            for uri in [u for u in self.model.docs if u.startswith(str(self.root) + "/") and u not in files]:
                del self.model.docs[uri]

    @rule(name=st.sampled_from(UPLOADS), acl=ACLS, meta=METAS, change=st.booleans())
    def upload(self, name: str, acl: Any, meta: Any, change: bool) -> None:
        import json

        self.versions[name] = self.versions.get(name, 0) + 1
        text = self._text(name)
        form: dict[str, str] = {"change_acl": "true" if change else "false"}
        if acl is not None:
            form["acl"] = ",".join(acl)
        if meta is not None:
            form["metadata"] = json.dumps(meta)
        r = self.client.post(f"/collections/{self.collection}/documents", files={"files": (name, text.encode())},
                             data=form, params={"wait": 60})
        assert r.status_code in (200, 202) and r.json()["status"] in ("succeeded", "failed"), r.text
        self.model.write({name: text}, acl=acl, meta=meta, change_acl=change, inherit_root=None)

    @invariant()
    def stored_documents_match_the_model(self) -> None:
        stored = {d.uri: d for d in self.engine.documents(collection=self.collection)} \
            if self.model.docs or self._exists() else {}
        assert set(stored) == set(self.model.docs)
        for uri, expected in self.model.docs.items():
            doc, text, _ = self.engine.document(uri, collection=self.collection)
            assert doc.acl == expected.acl, (uri, doc.acl, expected.acl)
            assert text == expected.text, uri
            for key, value in expected.meta.items():
                assert doc.metadata.get(key) == value, (uri, key, doc.metadata)
            for key in ("team", "year"):
                if key not in expected.meta:
                    assert key not in doc.metadata, (uri, key, doc.metadata)

    @invariant()
    def anonymous_search_sees_public_documents_only(self) -> None:
        if not self.model.docs:
            return
        hits = self.engine.search(WORD, collection=self.collection, mode="bm25", top_k=50,
                                  principal=Principal("anonymous")).hits
        public = {u for u, d in self.model.docs.items() if not d.acl}
        assert {h.uri for h in hits} == public

    def _exists(self) -> bool:
        return any(c.name == self.collection for c in self.engine.collections())


def test_acl_and_metadata_survive_any_sequence_of_writes(live: Any) -> None:
    def machine() -> AclMachine:
        return AclMachine(live.engine, live.url, live.keys["admin"])

    run_state_machine_as_test(machine, settings=settings(
        max_examples=12, stateful_step_count=10, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck)))
