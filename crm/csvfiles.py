"""Reading CSV exports of dealer systems without trusting them.

UTF-8 with or without a byte-order mark, a header row (names are matched without case and
surrounding spaces; extra columns are ignored; order is free). Whatever the bytes, the reader
yields each data row or a reason to reject it, never an exception: bytes that are not UTF-8,
NUL bytes, lines over ``MAX_LINE`` characters, fields over the csv module's limit and rows with
absurd numbers of cells are rejects of their line. Only a file that cannot be read at all, is
over ``MAX_FILE_BYTES``, or has a header without the required columns is refused as a whole
(``CsvFileError``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from core.errors import CsvFileError

MAX_FILE_BYTES: Final = 128 * 1024 * 1024  # rows are held in memory for ordering
MAX_LINE: Final = 1024 * 1024  # characters of one physical line
MAX_COLUMNS: Final = 256  # cells of the header and of a row


@dataclass
class Row:
    line: int  # the physical line the row starts at (1 = the header)
    cells: dict[str, str] | None  # known columns -> cell ('' when the row is short)
    reject: str | None = None  # why the row cannot be read


def _lines(fh: IO[str], long_lines: set[int]) -> Iterator[str]:
    """Physical lines; a line over ``MAX_LINE`` is skipped (its number kept in ``long_lines``)
    without ever holding it in memory whole."""
    n = 0
    while True:
        line = fh.readline(MAX_LINE + 1)
        if not line:
            return
        n += 1
        if len(line) > MAX_LINE and not line.endswith("\n"):
            while (more := fh.readline(MAX_LINE)) and not more.endswith("\n"):
                pass
            long_lines.add(n)
            yield "\n"
            continue
        yield line


def _not_utf8(cell: str) -> int | None:
    """The first byte of ``cell`` that was not UTF-8 (kept as a surrogate escape), if any."""
    try:
        cell.encode("utf-8")
    except UnicodeEncodeError as err:
        ch = ord(cell[err.start])
        return ch - 0xDC00 if 0xDC80 <= ch <= 0xDCFF else ch
    return None


def read_rows(path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> Iterator[Row]:
    """The data rows of ``path`` with the ``required`` and ``optional`` columns."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CsvFileError(f"{path}: {size} bytes; at most {MAX_FILE_BYTES} (split the file)")
        fh = path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as err:
        raise CsvFileError(f"{path}: cannot read: {err.strerror}") from err
    with fh:
        long_lines: set[int] = set()
        reader = csv.reader(_lines(fh, long_lines))
        end = 0
        header: list[str] | None = None
        index: dict[str, int] = {}
        while True:
            start = end + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as err:  # the parser picks up again at the next line
                end = reader.line_num
                if header is None:
                    raise CsvFileError(f"{path}:{start}: header: {err}") from None
                yield Row(start, None, f"not CSV: {err}")
                continue
            end = reader.line_num
            if long := sorted(n for n in long_lines if start <= n <= end):
                if header is None:
                    raise CsvFileError(f"{path}:{long[0]}: header line over {MAX_LINE} characters")
                yield Row(start, None, f"line {long[0]} is longer than {MAX_LINE} characters")
                continue
            if not any(c.strip() for c in cells):
                continue  # blank line
            if header is None:
                if len(cells) > MAX_COLUMNS:
                    raise CsvFileError(
                        f"{path}:{start}: header has {len(cells)} columns; at most {MAX_COLUMNS}"
                    )
                header = [c.strip().lstrip("\ufeff").lower() for c in cells]
                for name in (*required, *optional):
                    where = [i for i, h in enumerate(header) if h == name]
                    if len(where) > 1:
                        raise CsvFileError(f"{path}:{start}: column {name!r} appears twice")
                    if where:
                        index[name] = where[0]
                missing = [c for c in required if c not in index]
                if missing:
                    raise CsvFileError(
                        f"{path}:{start}: header lacks column(s) {', '.join(missing)} "
                        f"(found: {', '.join(h[:40] for h in header[:20])})"
                    )
                continue
            if len(cells) > max(len(header), MAX_COLUMNS):
                yield Row(start, None, f"{len(cells)} cells; the header has {len(header)}")
                continue
            row = {name: (cells[i] if i < len(cells) else "") for name, i in index.items()}
            reason = None
            for name, cell in row.items():
                if (byte := _not_utf8(cell)) is not None:
                    reason = f"{name}: not UTF-8 (byte 0x{byte:02x}); save the export as UTF-8"
                    break
                if "\x00" in cell:
                    reason = f"{name}: contains a NUL byte"
                    break
            yield Row(start, None if reason else row, reason)
        if header is None:
            raise CsvFileError(f"{path}: empty (no header row)")
