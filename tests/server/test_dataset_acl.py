"""Fine-tuning datasets over real HTTP as each key may read them (issue 14): versions admins only by
default, public, or for a group; rows carrying the ACLs of the documents they were made from. Every key
sees exactly its share in the list, the version and the rows; a hidden dataset answers exactly like a
missing one; counts are of visible rows; the PII of an admins-only dataset reaches no other key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

EMAIL, MARKER = "ann.lee@example.org", "PAYROLL-7731"  # in the admins-only dataset only
MIXED_SOURCES: list[list[tuple[str, ...]] | None] = [
    [("a",)],            # 1 a document for a
    [("b",)],            # 2 a document for b
    [("a",), ("b",)],    # 3 documents for a and for b: no single group reads both, so admins only
    [()],                # 4 a public document
    None,                # 5 not from documents: as the dataset
    [("a", "hr"), ("hr",)],  # 6 both documents admit hr
]
# What each key reads: dataset -> visible row lines (missing: the whole dataset is hidden).
EXPECTED: dict[str, dict[str, list[int]]] = {
    "admin": {"faq": [1, 2, 3], "hr-notes": [1, 2], "mixed": [1, 2, 3, 4, 5, 6], "payroll": [1, 2, 3, 4]},
    "a": {"faq": [1, 2, 3], "mixed": [1, 4, 5]},
    "b": {"faq": [1, 2, 3], "mixed": [2, 4, 5]},
    "hr": {"faq": [1, 2, 3], "hr-notes": [1, 2], "mixed": [4, 5, 6]},
    "nogroup": {"faq": [1, 2, 3], "mixed": [4, 5]},
}
NAMES = ("faq", "hr-notes", "mixed", "payroll")


def _chat(user: str, assistant: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def all_keys(live: Any) -> dict[str, str]:
    """The live server's keys plus one for group hr and one without groups (read scope only)."""
    from ragtune.server.auth import KeyStore

    store = KeyStore(live.engine.db)
    return {**live.keys, "hr": store.create("reader hr", groups=["hr"], scopes=["read"]).key,
            "nogroup": store.create("reader", scopes=["read"]).key}


@pytest.fixture(scope="module")
def stored(live: Any) -> Iterator[None]:
    from ragtune.finetune.data.examples import Example
    from ragtune.finetune.data.store import DatasetStore
    from ragtune.finetune.data.versions import ImportOptions

    store = DatasetStore(live.engine.db, cache_dir=live.settings.resolved_cache_dir)
    chat = ImportOptions(format="chat", eval_fraction=0.0)
    payroll = [_chat(f"What is the salary of employee {i}?", f"{MARKER}: {3000 + i} euros, paid to {EMAIL}.")
               for i in range(4)]
    store.import_bytes(_jsonl(payroll), name="payroll", source="payroll.jsonl", options=chat)  # admins only
    faq = [_chat(f"When does the office open on day {i}?", "At nine.") for i in range(3)]
    store.import_bytes(_jsonl(faq), name="faq", source="faq.jsonl",
                       options=ImportOptions(format="chat", eval_fraction=0.0, acl=()))
    notes = [_chat(f"Which form starts leave request {i}?", "Form L-2.") for i in range(2)]
    store.import_bytes(_jsonl(notes), name="hr-notes", source="notes.jsonl",
                       options=ImportOptions(format="chat", eval_fraction=0.0, acl=("hr",)))
    mixed = [Example(0, [{"role": "user", "content": f"What does source set {i} say?"},
                         {"role": "assistant", "content": f"Set {i} says {'secret ' * (i == 3)}things."}])
             for i in range(1, len(MIXED_SOURCES) + 1)]
    store.import_examples(mixed, name="mixed", source="documents", source_acls=MIXED_SOURCES,
                          options=ImportOptions(eval_fraction=0.0, acl=()))
    yield


def _client(live: Any, all_keys: dict[str, str], key: str) -> httpx.Client:
    return live.client(all_keys[key])  # type: ignore[no-any-return]


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_each_key_reads_exactly_its_share(live: Any, all_keys: dict[str, str], stored: None, key: str) -> None:
    expected = EXPECTED[key]
    with _client(live, all_keys, key) as client:
        listed = client.get("/datasets")
        assert listed.status_code == 200
        assert {d["name"]: d["row_count"] for d in listed.json()} == {n: len(v) for n, v in expected.items()}
        for name in NAMES:
            shown, rows = client.get(f"/datasets/{name}"), client.get(f"/datasets/{name}/rows")
            if name not in expected:
                assert shown.status_code == rows.status_code == 404
                continue
            assert shown.status_code == rows.status_code == 200, (shown.text, rows.text)
            page = rows.json()
            assert page["total"] == len(expected[name]) == shown.json()["row_count"]
            assert [r["line"] for r in page["rows"]] == expected[name]
            assert client.get(f"/datasets/{name}/rows", params={"limit": 1, "offset": 1}).json()["total"] == \
                len(expected[name])
            assert shown.json()["train_rows"] == len(expected[name]) and shown.json()["eval_rows"] == 0


def test_hidden_datasets_answer_exactly_like_missing_ones(live: Any, all_keys: dict[str, str], stored: None) -> None:
    for key, expected in EXPECTED.items():
        with _client(live, all_keys, key) as client:
            for name in set(NAMES) - set(expected):
                for path, params in (("", {}), ("", {"version": 1}), ("/rows", {}), ("/rows", {"version": 1}),
                                     ("/rows", {"split": "train"})):
                    hidden = client.get(f"/datasets/{name}{path}", params=params)
                    missing = client.get(f"/datasets/no-such-set{path}", params=params)
                    assert hidden.status_code == missing.status_code == 404
                    assert hidden.headers["content-type"] == missing.headers["content-type"]
                    assert hidden.text.replace(name, "?") == missing.text.replace("no-such-set", "?"), (key, name)
                    assert json.loads(hidden.text)["detail"] == f"no dataset named {name!r}"


def test_a_version_hidden_from_a_key_is_not_listed_among_its_versions(live: Any, all_keys: dict[str, str],
                                                                      stored: None) -> None:
    from ragtune.finetune.data.store import DatasetStore
    from ragtune.finetune.data.versions import ImportOptions
    from ragtune.models import Principal

    store = DatasetStore(live.engine.db, cache_dir=live.settings.resolved_cache_dir)
    rows = [_chat(f"Question {i} about the handbook?", f"Answer {i}.") for i in range(3)]
    store.import_bytes(_jsonl(rows), name="versioned", source="v1.jsonl", options=ImportOptions(format="chat"))
    store.import_bytes(_jsonl(rows[:2]), name="versioned", source="v2.jsonl",
                       options=ImportOptions(format="chat", acl=("a",)))
    try:
        with _client(live, all_keys, "a") as a, _client(live, all_keys, "admin") as admin:
            assert a.get("/datasets/versioned").json()["version"] == 2
            hidden = a.get("/datasets/versioned", params={"version": 1})
            assert hidden.status_code == 404 and hidden.json()["detail"] == \
                "dataset 'versioned' has no version 1 (versions: [2])"
            assert a.get("/datasets/versioned/rows", params={"version": 1}).status_code == 404
            assert admin.get("/datasets/versioned", params={"version": 1}).json()["row_count"] == 3
        with _client(live, all_keys, "b") as b:
            assert b.get("/datasets/versioned").json()["detail"] == "no dataset named 'versioned'"
    finally:
        store.remove("versioned", principal=Principal.system())


def test_admins_only_pii_never_reaches_another_key(live: Any, all_keys: dict[str, str], stored: None) -> None:
    def everything(client: httpx.Client) -> str:
        texts = [client.get("/datasets").text]
        for name in NAMES:
            texts += [client.get(f"/datasets/{name}").text, client.get(f"/datasets/{name}", params={"version": 1}).text]
            for params in ({}, {"version": 1}, {"split": "train"}, {"split": "eval"}, {"limit": 500}):
                texts.append(client.get(f"/datasets/{name}/rows", params=params).text)
        return "\n".join(texts)

    with _client(live, all_keys, "admin") as admin:  # the check can fail: the admin key does read them
        seen = everything(admin)
    assert EMAIL in seen and MARKER in seen and '"name":"payroll"' in seen and "secret things" in seen
    for key in sorted(set(EXPECTED) - {"admin"}):
        with _client(live, all_keys, key) as client:
            seen = everything(client)
        assert EMAIL not in seen and MARKER not in seen and '"name":"payroll"' not in seen, key
        assert "secret things" not in seen, key  # the mixed row whose documents only admins read together


def test_a_partial_view_withholds_what_was_computed_over_every_row(live: Any, all_keys: dict[str, str],
                                                                 stored: None) -> None:
    with _client(live, all_keys, "admin") as admin:
        full = admin.get("/datasets/mixed").json()
    assert full["row_count"] == 6 and full["report"]["rows"] == 6 and full["schema"]["row_acls"]
    with _client(live, all_keys, "a") as a:
        partial = a.get("/datasets/mixed").json()
        listed = {d["name"]: d for d in a.get("/datasets").json()}["mixed"]
    assert partial["row_count"] == listed["row_count"] == 3
    assert list(partial["report"]) == ["withheld"] and partial["schema"] == {"format": "chat", "row_acls": True}
    assert partial["acl"] == [] and partial["valid"] == full["valid"]
