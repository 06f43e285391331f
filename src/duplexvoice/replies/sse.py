"""Server-sent events, decoded incrementally (pure: bytes in, event data out).

Per the HTML standard's event-stream format, reduced to what chat-completions
streams use: lines end with CRLF, LF or CR (a CR at the end of one network chunk and
an LF at the start of the next are one line end); ``data:`` lines of one event are
joined with "\\n" and the event is dispatched at a blank line; comments (``:``) and
other fields (``event``, ``id``, ``retry``) are ignored. Lenient where servers are
sloppy: at the end of the stream, data not followed by a blank line is still
dispatched. Bounded: a line or an event longer than ``max_chars`` is an error.
"""

from __future__ import annotations

import codecs


class SseError(ValueError):
    """The byte stream is not a usable event stream."""


class SseDecoder:
    """Feed bytes as they arrive; get the data of each complete event."""

    def __init__(self, max_chars: int = 1 << 20) -> None:
        self._max = max_chars
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""  # the current, incomplete line
        self._after_cr = False  # the last character seen was a CR
        self._data: list[str] = []  # data lines of the current event
        self._size = 0

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the data of every event they completed."""
        return self._lines(self._text.decode(chunk))

    def close(self) -> list[str]:
        """End of stream: return the data of a last event left without a blank line."""
        events = self._lines(self._text.decode(b"", final=True))
        if self._line:
            events += self._take_line(self._line)
            self._line = ""
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events

    def _lines(self, text: str) -> list[str]:
        events: list[str] = []
        start = 0
        for i, ch in enumerate(text):
            if ch == "\n" and self._after_cr and i == start:
                self._after_cr = False  # the LF of a CRLF: the line ended at the CR
                start = i + 1
                continue
            if ch in "\r\n":
                events += self._take_line(self._line + text[start:i])
                self._line = ""
                self._after_cr = ch == "\r"
                start = i + 1
        if start < len(text):
            self._after_cr = False
            self._line += text[start:]
            if len(self._line) > self._max:
                raise SseError(f"an event-stream line is longer than {self._max} characters")
        return events

    def _take_line(self, line: str) -> list[str]:
        if not line:
            if not self._data:
                return []
            event = "\n".join(self._data)
            self._data = []
            self._size = 0
            return [event]
        field, _, value = line.partition(":")
        if field == "data":
            value = value.removeprefix(" ")
            self._size += len(value) + 1
            if self._size > self._max:
                raise SseError(f"an event is longer than {self._max} characters")
            self._data.append(value)
        return []
