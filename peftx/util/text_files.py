"""Reading a user's text file (recipes, data files, `peftx predict` inputs) in one place, so that every
reader refuses the same things with the same one line: a missing file, a folder, an unreadable file,
binary data and bytes that are not UTF-8. UTF-8 (with or without a byte-order mark) and UTF-16/32 with
their byte-order mark are read. Lines end at LF, CRLF or a bare CR, and nowhere else (`str.splitlines`
also breaks at form feeds, vertical tabs and Unicode separators, which an editor shows inside a line),
so line numbers in messages are the ones `split_lines` gives.

Written by hand because no library does this job: Python's own decoders raise with a byte offset and
no line, and treat NUL bytes (binary files) as text.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from peftx.errors import PeftxError

# Byte-order marks, longest first (UTF-32-LE's starts with UTF-16-LE's).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


_LINE_END = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """The lines of a text, each without its ending (LF, CRLF or a bare CR); no empty last line for a
    text that ends with a line ending.

    Args:
        text: a decoded file.

    Returns:
        Its lines, so that line n of a message is `split_lines(text)[n - 1]`.
    """
    lines = _LINE_END.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def line_number(text: str | bytes, offset: int) -> int:
    """The 1-based line (as `split_lines` counts) holding the character or byte at `offset`."""
    nl, cr, crlf = ("\n", "\r", "\r\n") if isinstance(text, str) else (b"\n", b"\r", b"\r\n")
    return text.count(nl, 0, offset) + text.count(cr, 0, offset) - text.count(crlf, 0, offset) + 1


def decode_text(data: bytes, where: str) -> str:
    """Bytes of a text file as a string.

    Args:
        data: the file's content.
        where: the file's name, for messages.

    Raises:
        PeftxError: bytes that are not text in the file's encoding, or a NUL byte (binary data), naming
            the line.
    """
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = line_number(data, e.start)
        name = "UTF-8" if encoding.startswith("utf-8") else encoding.upper()
        raise PeftxError(f"{where}:{line}: not {name} text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    nul = text.find("\0")
    if nul >= 0:
        line = line_number(text, nul)
        raise PeftxError(f"{where}:{line}: binary data (a NUL byte), not a text file")
    return text


def read_text(path: str | Path, kind: str = "file") -> str:
    """A text file's content (see the module docstring for what is accepted).

    Args:
        path: the file.
        kind: what the file is, for messages ("recipe file", "ListOps file").

    Raises:
        PeftxError: no such file, a folder, unreadable, binary or not text; one line naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise PeftxError(f"{path}: is a folder, not a {kind}")
    if not path.exists():
        raise PeftxError(f"{path}: no such {kind}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PeftxError(f"{path}: cannot read the {kind}: {e.strerror or e}") from None
    return decode_text(data, str(path))
