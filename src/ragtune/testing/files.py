"""Real files for tests and benchmarks, built in memory: DOCX (python-docx), zips rewritten member by
member (decompression bombs, members that lie about their size) and minimal PDFs with Flate streams.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

MB = 1_000_000
SENTENCE = ("the quarterly report shows revenue growth in every region while costs stayed flat and the board "
            "approved the plan for the next year after a long discussion of risks")


def docx_bytes(paragraphs: list[str] | None = None, *, table: list[list[str]] | None = None,
               heading: str | None = None) -> bytes:
    import docx

    document = docx.Document()
    if heading:
        document.add_heading(heading, 1)
    for text in paragraphs or ["A short report on the canteen."]:
        document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def rezip(data: bytes, replace: dict[str, Callable[[Any], None] | bytes] | None = None,
          add: dict[str, bytes] | None = None, compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    """The zip ``data`` with members replaced (bytes, or a function writing to the member's stream)
    and members added."""
    replace, add = replace or {}, add or {}
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compress) as target:
        for info in source.infolist():
            new = replace.get(info.filename)
            if new is None:
                target.writestr(info.filename, source.read(info.filename))
            elif isinstance(new, bytes):
                target.writestr(info.filename, new)
            else:
                with target.open(info.filename, "w", force_zip64=True) as stream:
                    new(stream)
        for name, content in add.items():
            target.writestr(name, content)
    return out.getvalue()


def bomb_docx(expanded: int, sentence: str = SENTENCE) -> bytes:
    """A real DOCX whose body is ``expanded`` bytes of one paragraph repeated (what a runaway
    generator writes): python-docx opens it, and it compresses ~200x."""
    template = docx_bytes()
    xml = zipfile.ZipFile(io.BytesIO(template)).read("word/document.xml").decode()
    head = xml.split("<w:body>")[0] + "<w:body>"
    tail = "<w:sectPr" + xml.split("<w:sectPr", 1)[1]
    unit = f"<w:p><w:r><w:t>{sentence}</w:t></w:r></w:p>".encode()

    def write(stream: Any) -> None:
        stream.write(head.encode())
        block = unit * (MB // len(unit))
        for _ in range(expanded // len(block)):
            stream.write(block)
        stream.write(unit * ((expanded % len(block)) // len(unit)))
        stream.write(tail.encode())

    return rezip(template, {"word/document.xml": write})


def lie_about_size(data: bytes, name: str, declared: bytes) -> bytes:
    """``data`` with member ``name`` declaring ``len(declared)`` uncompressed bytes and the CRC of
    ``declared`` (a prefix of the real content), in its local header and central directory alike:
    ``zipfile`` then hands out that prefix without complaint, after inflating the whole member."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
    out = bytearray(data)
    crc, size = zlib.crc32(declared), len(declared)
    struct.pack_into("<L", out, info.header_offset + 14, crc)  # local header: crc-32 ...
    struct.pack_into("<L", out, info.header_offset + 22, size)  # ... and uncompressed size
    central = bytes(out).find(b"PK\x01\x02")
    while True:  # the central directory entry of `name`
        name_len = struct.unpack_from("<H", out, central + 28)[0]
        if bytes(out[central + 46:central + 46 + name_len]).decode() == name:
            break
        central = bytes(out).find(b"PK\x01\x02", central + 4)
    struct.pack_into("<L", out, central + 16, crc)
    struct.pack_into("<L", out, central + 24, size)
    return bytes(out)


def pdf_bytes(pages: list[bytes], forms: dict[str, bytes] | None = None) -> bytes:
    """A PDF with one Flate-compressed content stream per page; ``forms`` are Flate-compressed
    form XObjects every page may draw by name (``/Fm1 Do``)."""
    forms = forms or {}
    objects: dict[int, bytes] = {1: b"<< /Type /Catalog /Pages 2 0 R >>",
                                 3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"}
    number = 4
    form_refs = []
    for name, content in forms.items():
        packed = zlib.compress(content, 9)
        objects[number] = (b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >>"
                           b" >> /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream")
        form_refs.append(f"/{name} {number} 0 R")
        number += 1
    kids = []
    for content in pages:
        packed = zlib.compress(content, 9)
        xobjects = f"/XObject << {' '.join(form_refs)} >>" if form_refs else ""
        objects[number] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >>"
                           f" {xobjects} >> /Contents {number + 1} 0 R >>").encode()
        objects[number + 1] = b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream"
        kids.append(f"{number} 0 R")
        number += 2
    objects[2] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>".encode()
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for n in sorted(objects):
        offsets[n] = len(out)
        out += b"%d 0 obj\n" % n + objects[n] + b"\nendobj\n"
    xref, size = len(out), max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for n in range(1, size):
        out += b"%010d 00000 n \n" % offsets[n]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(out)


def text_page(text: str) -> bytes:
    return f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET\n".encode()
