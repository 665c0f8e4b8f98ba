"""Reading a user's text file line by line as UTF-8, with the line and byte of any decoding error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


class NotUTF8(ValueError):
    """Line ``line`` of a file is not UTF-8; ``reason`` says which byte, for the caller's own message."""

    def __init__(self, line: int, byte: int, column: int):
        self.line, self.reason = line, f"not UTF-8 text (byte 0x{byte:02x} at column {column})"
        super().__init__(f"line {line}: {self.reason}")


def utf8_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, text) of each line, decoded as UTF-8 with a leading byte-order mark dropped; raises
    :class:`NotUTF8` at the first line that is not UTF-8."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise NotUTF8(number, raw[err.start], err.start + 1) from None
            yield number, text.removeprefix("\ufeff") if number == 1 else text
