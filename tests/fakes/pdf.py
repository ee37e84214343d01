"""A small real PDF, written by hand: text lines and a ruled table, for the PDF reader's
tests (no PDF library on the host; the reader's pdfplumber runs in the extension image)."""

from __future__ import annotations


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def table_pdf(title: str, lines: list[str], table: list[list[str]]) -> bytes:
    """One A4 page: `title`, the text `lines`, then `table` drawn as a grid of ruled cells
    (pdfplumber finds a table by its ruling lines)."""
    ops: list[str] = []
    y = 800
    for i, text in enumerate([title, *lines]):
        size = 16 if i == 0 else 11
        ops.append(f"BT /F1 {size} Tf 60 {y} Td ({_escape(text)}) Tj ET")
        y -= 24
    y -= 10
    cell_w, cell_h = 140, 22
    rows, cols = len(table), max(len(r) for r in table)
    top, left = y, 60
    for r in range(rows + 1):  # horizontal rules
        yy = top - r * cell_h
        ops.append(f"{left} {yy} m {left + cols * cell_w} {yy} l S")
    for c in range(cols + 1):  # vertical rules
        xx = left + c * cell_w
        ops.append(f"{xx} {top} m {xx} {top - rows * cell_h} l S")
    for r, row in enumerate(table):
        for c, text in enumerate(row):
            x, yy = left + c * cell_w + 6, top - (r + 1) * cell_h + 7
            ops.append(f"BT /F1 11 Tf {x} {yy} Td ({_escape(text)}) Tj ET")
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
