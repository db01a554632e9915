"""Content, not chrome: how much of what we index from real manuals is navigation, running heads,
page numbers and contents lines, before and after issue 16's cleaning; what the cleaning keeps of
the text; trafilatura (the field's main-content extractor) on the same pages; and near-duplicate
documents found at ingest, on the Debian corpus and on SQuAD/HotpotQA.

    python benchmarks/boilerplate.py [--source /usr/share/doc] [--sample 100] [--export FILE]

Corpus: the HTML and PDF documents (gzipped ones too) that this machine's Debian packages ship in
/usr/share/doc, read in place, never copied into the repository. Each is loaded twice, with
``strip_boilerplate`` off (the code before: only script/style/nav/footer elements dropped) and on,
and chunked by the default chunker (256 tokens, MiniLM's tokenizer).

Labels: ``--sample`` chunks drawn at random from each side (the lowest seeded hashes of their
text, so a small change to the cleaning leaves most of the sample, and its labels, in place), labelled by hand in
benchmarks/labels/boilerplate.json by the SHA-1 of the chunk's text (the text itself is not
committed). A chunk is *boilerplate* when at least half of it is navigation, menus, link lists,
running heads, page numbers or table-of-contents lines, or when it is only titles with no
content. ``--export FILE`` writes the sampled chunks that have no label yet, for labelling.

Retention (no labels needed beyond the sample): for each labelled chunk of the "before" side, the
share of its word 5-grams still present in the cleaned text of its document (ours) and in
trafilatura's extraction of the same file (HTML only). Writes benchmarks/results/boilerplate.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import bench_engine, wilson, write_result
from rich.console import Console
from rich.table import Table

from ragtune.errors import IngestError
from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.retrieval import dataset_documents
from ragtune.ingest.duplicates import NearDuplicateIndex, shingles, signature
from ragtune.ingest.loaders import LoaderOptions, load_files
from ragtune.ingest.loaders.discover import iter_files
from ragtune.models import LoadedDocument

console = Console()
LABELS = Path(__file__).resolve().parent / "labels" / "boilerplate.json"
SEED = 16


def digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def bottom_k(items: list[tuple[str, str]], k: int) -> list[tuple[str, str]]:
    """A uniform random sample that a small change to the corpus changes little (so labels stay
    valid): the k chunks whose seeded hash of their document's URI and their text is lowest (the
    URI too, or the many chunks that two pages share would be drawn together)."""
    return sorted(items, key=lambda item: hashlib.sha1(f"{SEED}:{item[0]}:{item[1]}".encode()).digest())[:k]


def load(files: list[Path], strip: bool) -> tuple[dict[str, LoadedDocument], float]:
    started = time.perf_counter()
    docs = {}
    for item in load_files(files, LoaderOptions(strip_boilerplate=strip)):
        if isinstance(item, LoadedDocument) and item.metadata.get("format") in ("html", "pdf"):
            docs[item.uri] = item
    return docs, time.perf_counter() - started


def chunk_all(chunker: Any, docs: dict[str, LoadedDocument]) -> list[tuple[str, str]]:
    return [(uri, c.text) for uri, doc in docs.items() for c in chunker.split(doc)]


def retained(chunk: str, text: str | None) -> float | None:
    if text is None:
        return None
    grams = shingles(chunk)
    if not grams:
        return None
    return len(grams & shingles(text)) / len(grams)


def trafilatura_text(uri: str) -> str | None:
    """trafilatura's main content of an HTML file, favouring recall and keeping tables."""
    import trafilatura

    from ragtune.ingest.encoding import decode_bytes

    path = Path(uri.split("!", 1)[0])
    if path.suffix.lower() not in (".html", ".htm"):
        return None
    return trafilatura.extract(decode_bytes(path.read_bytes(), uri), include_tables=True, favor_recall=True) or ""


def near_duplicates(docs: list[LoadedDocument], threshold: float) -> tuple[int, list[tuple[str, str]], float]:
    index = NearDuplicateIndex(threshold, list)
    linked: list[tuple[str, str]] = []
    started = time.perf_counter()
    for doc in docs:
        original = index.original_of(doc.uri, (), signature(doc.text))
        if original is not None:
            linked.append((doc.uri, original))
    return len(linked), linked, time.perf_counter() - started


def qa_duplicates(threshold: float, cache: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("squad", "hotpotqa"):
        ds = load_dataset(name, cache)
        docs = dataset_documents(ds)
        n, pairs, seconds = near_duplicates(docs, threshold)
        relevant = {doc for q in ds.qrels.values() for doc in q}
        hit = [p for p in pairs if p[0] in relevant]
        out[name] = {"documents": len(docs), "linked": n, "linked_relevant": len(hit), "seconds": round(seconds, 1),
                     "examples": pairs[:5]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("/usr/share/doc"))
    parser.add_argument("--sample", type=int, default=100, help="chunks labelled on each side")
    parser.add_argument("--export", type=Path, help="write the unlabelled sampled chunks here and stop")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--skip-qa", action="store_true", help="leave out SQuAD/HotpotQA near-duplicates")
    args = parser.parse_args()

    files = [p for p in iter_files([args.source]) if any(s in p.name.lower() for s in (".htm", ".pdf"))]
    before, before_s = load(files, strip=False)
    after, after_s = load(files, strip=True)
    with bench_engine() as rt:
        chunker = rt.chunker()
        cache = rt.settings.resolved_cache_dir / "packages"
        chunks = {"before": chunk_all(chunker, before), "after": chunk_all(chunker, after)}
    samples = {side: bottom_k(items, args.sample) for side, items in chunks.items()}
    labels: dict[str, str] = json.loads(LABELS.read_text()) if LABELS.exists() else {}
    missing = [(side, uri, text) for side, items in samples.items() for uri, text in items
               if digest(text) not in labels]
    if args.export:
        rows = [{"id": digest(t), "side": s, "uri": u, "text": t} for s, u, t in missing]
        args.export.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
        console.print(f"{len(missing)} unlabelled chunks written to {args.export}")
        return
    if missing:
        sys.exit(f"{len(missing)} sampled chunks have no label in {LABELS}: run with --export FILE and label them")

    rows: dict[str, Any] = {}
    for side, items in samples.items():
        k = sum(labels[digest(t)] == "boilerplate" for _, t in items)
        low, high = wilson(k, len(items))
        kinds = Counter(before[u].metadata["format"] if u in before else "?" for u, _ in items)
        rows[side] = {"chunks": len(chunks[side]), "documents": len(before if side == "before" else after),
                      "sample": len(items), "boilerplate": k, "share": k / len(items), "ci95": [low, high],
                      "sample_formats": dict(kinds)}
    # what the cleaning keeps and drops of the labelled "before" chunks, ours and trafilatura's
    keep: dict[str, dict[str, list[float]]] = {"ours": {"content": [], "boilerplate": []},
                                               "trafilatura": {"content": [], "boilerplate": []}}
    traf_cache: dict[str, str | None] = {}
    traf_seconds = 0.0
    for uri, text in samples["before"]:
        label = labels[digest(text)]
        ours = retained(text, after[uri].text if uri in after else "")
        if ours is not None:
            keep["ours"][label].append(ours)
        if uri not in traf_cache:
            started = time.perf_counter()
            traf_cache[uri] = trafilatura_text(uri)
            traf_seconds += time.perf_counter() - started
        theirs = retained(text, traf_cache[uri])
        if theirs is not None:
            keep["trafilatura"][label].append(theirs)
            if ours is not None:
                keep.setdefault("ours on the same HTML chunks", {"content": [], "boilerplate": []})[label].append(ours)
    retention = {name: {label: {"n": len(v), "mean_kept": (sum(v) / len(v)) if v else None}
                        for label, v in by.items()} for name, by in keep.items()}
    html_files = [p for p in files if ".htm" in p.name.lower()]
    started = time.perf_counter()
    for path in html_files:
        trafilatura_text(str(path))
    traf_all = time.perf_counter() - started

    n_linked, pairs, dup_seconds = near_duplicates(list(after.values()), args.threshold)
    all_docs = [d for d in load_files(list(iter_files([args.source])), LoaderOptions())
                if not isinstance(d, IngestError)]
    n_all, pairs_all, dup_all_seconds = near_duplicates(all_docs, args.threshold)
    result: dict[str, Any] = {
        "source": str(args.source), "files": len(files), "sample_seed": SEED,
        "load_seconds": {"before": round(before_s, 1), "after": round(after_s, 1),
                         "trafilatura_all_html": round(traf_all, 1), "html_files": len(html_files)},
        "boilerplate": rows, "retention": retention,
        "near_duplicates": {
            "threshold": args.threshold,
            "html_pdf": {"documents": len(after), "linked": n_linked, "seconds": round(dup_seconds, 1),
                         "pdf_html_pairs": [p for p in pairs if (".pdf" in p[0]) != (".pdf" in p[1])][:10]},
            "whole_corpus": {"documents": len(all_docs), "linked": n_all, "seconds": round(dup_all_seconds, 1),
                             "examples": pairs_all[:10]},
        },
    }
    if not args.skip_qa:
        result["near_duplicates"]["qa"] = qa_duplicates(args.threshold, cache)
    path = write_result("boilerplate", result)

    table = Table(title=f"boilerplate chunks in a random sample ({args.sample} a side, labelled by hand)")
    for col in ("side", "documents", "chunks", "boilerplate", "share", "95% CI"):
        table.add_column(col, justify="right")
    for side, r in rows.items():
        table.add_row(side, str(r["documents"]), str(r["chunks"]), f"{r['boilerplate']}/{r['sample']}",
                      f"{r['share']:.1%}", f"{r['ci95'][0]:.1%}-{r['ci95'][1]:.1%}")
    console.print(table)
    kept = Table(title="share of each labelled 'before' chunk's 5-grams kept")
    for col in ("extractor", "content chunks kept", "boilerplate chunks kept"):
        kept.add_column(col, justify="right")
    for name, by in retention.items():
        kept.add_row(name, *(f"{by[label]['mean_kept']:.1%} (n={by[label]['n']})" if by[label]["n"] else "-"
                             for label in ("content", "boilerplate")))
    console.print(kept)
    console.print(f"near-duplicates linked: {n_linked} of {len(after)} HTML/PDF documents, {n_all} of "
                  f"{len(all_docs)} in the whole corpus; results in {path}")


if __name__ == "__main__":
    main()
