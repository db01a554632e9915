"""Content, not chrome (issue 16): HTML navigation and link lists, PDF running heads, page
numbers and contents lines are left out of documents by default; ``strip_boilerplate = false``
keeps them. Real pages in the shapes documentation generators write (texinfo, DocBook, Sphinx,
a site with a menu column), real PDFs written by ``make_pdf``, loaded through the loaders."""

from __future__ import annotations

from pathlib import Path

from ragtune.ingest.loaders import LoaderOptions, load_files
from ragtune.ingest.loaders.html import html_to_text
from ragtune.ingest.loaders.pdf_chrome import strip_page_chrome
from ragtune.models import LoadedDocument

from .test_loaders import make_pdf

TEXINFO = """<html><head><title>Thread Safety (libffi)</title></head><body>
<div class="nav-panel"><p>Previous: <a href="Closure-Example.html" accesskey="p" rel="prev">Closure Example</a>,
Up: <a href="Using-libffi.html" accesskey="u" rel="up">Using libffi</a> &nbsp;
[<a href="Index.html" rel="index">Index</a>]</p>
</div><hr>
<h3 class="section">2.7 Thread Safety</h3>
<p>libffi is not completely thread-safe. However, many parts are, and if you follow some simple
rules, you can use it safely in a <a href="x.html">multi-threaded</a> program.</p>
<ul><li><code>ffi_prep_cif</code> may modify the <code>ffi_type</code> objects passed to it.</li></ul>
</body></html>"""

MENU_COLUMN = """<html><body><table><tr>
<td><b>API Menu</b><ul><li><a href="index.html">Home</a></li><li><a href="intro.html">Introduction</a></li>
<li><a href="docs.html">Documentation</a></li><li><a href="bugs.html">Reporting bugs</a></li></ul></td>
<td><h2>Module templates</h2><p>This set of routines encapsulates XPath calls and attribute value
templates evaluation, see <a href="xpath.html">XPath</a> for the expressions.</p>
<h3>Function: xsltTemplateProcess</h3><pre>xmlNodePtr *	xsltTemplateProcess	(ctxt, node)</pre>
<p>Obsolete. Don't use it.</p></td></tr></table></body></html>"""

MAIN_MARKED = """<html><body><div role="navigation" id="column2"><ul>
<li><a href="assert.html">Assertion testing</a></li><li><a href="buffer.html">Buffer</a></li></ul></div>
<div role="main" id="apicontent"><h2>Policies<span><a class="mark" href="#policies">#</a></span></h2>
<p>The former Policies documentation is now at <a href="permissions.html">Permissions documentation</a>.</p>
</div></body></html>"""

INDEX_PAGE = """<html><body><ul><li><a href="a.html">Arrays</a></li><li><a href="b.html">Basics</a></li>
<li><a href="c.html">Closures</a></li></ul></body></html>"""


def text_of(html: str, strip: bool = True) -> str:
    return html_to_text(html, strip_chrome=strip)[0]


def test_texinfo_navigation_bar_is_left_out_and_the_text_kept() -> None:
    kept = text_of(TEXINFO)
    assert "Previous:" not in kept and "[Index]" not in kept
    assert kept.startswith("2.7 Thread Safety")
    assert "use it safely in a multi-threaded program." in kept  # a link inside a sentence stays
    assert "ffi_prep_cif may modify" in kept
    assert "Previous: Closure Example" in text_of(TEXINFO, strip=False)  # off: as before


def test_a_menu_column_and_its_orphaned_label_go_code_and_sections_stay() -> None:
    text, sections, _ = html_to_text(MENU_COLUMN, strip_chrome=True)
    assert "Introduction" not in text and "Reporting bugs" not in text and "API Menu" not in text
    assert "encapsulates XPath calls" in text and "xsltTemplateProcess" in text and "Obsolete." in text
    assert [s.title for s in sections] == ["Module templates", "Function: xsltTemplateProcess"]
    for section in sections:  # offsets still point at the headings in the kept text
        assert text[section.start:].startswith(section.title)


def test_a_page_marking_its_main_content_is_read_from_there_without_permalinks() -> None:
    assert text_of(MAIN_MARKED) == ("Policies\n\nThe former Policies documentation is now at Permissions "
                                    "documentation.")


def test_a_page_of_nothing_but_links_is_read_whole() -> None:
    assert text_of(INDEX_PAGE) == text_of(INDEX_PAGE, strip=False) == "Arrays\n\nBasics\n\nClosures"


def test_the_html_loader_strips_by_default_and_the_option_turns_it_off(tmp_path: Path) -> None:
    page = tmp_path / "thread.html"
    page.write_text(TEXINFO)
    (on,) = [d for d in load_files([page], LoaderOptions()) if isinstance(d, LoadedDocument)]
    (off,) = [d for d in load_files([page], LoaderOptions(strip_boilerplate=False)) if isinstance(d, LoadedDocument)]
    assert "Previous:" not in on.text and "Previous:" in off.text


def manual_pages() -> list[str]:
    pages = ["Table of Contents\n1. Introduction . . . . . . . . . 1\n2. How to use bzip2 ........ 2\n"
             "2.1. NAME . . . . . . . . . . . . . 2\niii"]
    body = ["bzip2 compresses files using the Burrows-Wheeler block sorting algorithm.",
            "Compression is always performed, even if the compressed file is larger.",
            "As a self-check for your protection, bzip2 uses 32-bit CRCs.",
            "Exit status 0 for a normal exit, 1 for environmental problems.",
            "The 2. list of options . . . is written with dots but is a sentence."]
    topics = ["blocks", "streams", "checksums", "errors", "options"]
    for number, (line, topic) in enumerate(zip(body, topics, strict=True), start=1):
        filler = "\n".join(f"A {kind} sentence on {topic}." for kind in ("second", "third"))
        closing = "\n".join(f"A {kind} sentence on {topic}." for kind in ("fifth", "sixth", "seventh"))
        pages.append(f"How to use bzip2\n{line}\n{filler}\nMore text on page {number}.\n{closing}\n{number}")
    return pages


def test_running_heads_page_numbers_and_contents_lines_go() -> None:
    cleaned, removed = strip_page_chrome(manual_pages())
    assert removed == 4 + 5 * 2  # 3 contents lines and "iii"; per page a head and a number
    assert cleaned[0] == "Table of Contents"
    for number, page in enumerate(cleaned[1:], start=1):
        assert "How to use bzip2" not in page and not page.endswith(f"\n{number}")
        assert f"More text on page {number}." in page  # inside the page, the same words with a number stay
    assert "written with dots but is a sentence." in cleaned[5]


def test_a_head_on_too_few_pages_is_text() -> None:
    pages = manual_pages()[:3]  # the head is on 2 pages only
    cleaned, _ = strip_page_chrome(pages)
    assert all(page.startswith("How to use bzip2") for page in cleaned[1:])


def test_the_pdf_loader_strips_running_heads_and_keeps_page_starts(tmp_path: Path) -> None:
    path = tmp_path / "manual.pdf"
    path.write_bytes(make_pdf(manual_pages(), "bzip2 manual"))
    (doc,) = [d for d in load_files([path], LoaderOptions()) if isinstance(d, LoadedDocument)]
    assert "How to use bzip2" not in doc.text and ". . . ." not in doc.text
    assert "Burrows-Wheeler" in doc.text
    starts = doc.metadata["page_starts"]
    assert len(starts) == 6 and doc.text[starts[2]:].startswith("Compression is always performed")
    (raw,) = [d for d in load_files([path], LoaderOptions(strip_boilerplate=False))
              if isinstance(d, LoadedDocument)]
    assert raw.text.count("How to use bzip2") == 5 + 1  # and in the contents


def test_a_line_repeated_on_short_pages_is_their_text() -> None:
    slides = [f"Quarterly review {n}: revenue grew in region {n}" for n in range(1, 7)]
    assert strip_page_chrome(slides) == (slides, 0)


def test_the_ingest_settings_reach_the_loaders() -> None:
    from ragtune.settings import Settings

    options = LoaderOptions.from_settings(Settings.of(strip_boilerplate=False, ocr_lang="deu+eng", ocr_max_pages=3))
    assert (options.strip_boilerplate, options.ocr_lang, options.ocr_max_pages) == (False, "deu+eng", 3)
    assert LoaderOptions.from_settings(Settings.of()).strip_boilerplate is True
