"""How the CLI shows events: a live terminal display, one line per event, or JSON lines."""

from __future__ import annotations

import json
import shutil
from typing import Any, Protocol, TextIO

import attrs

from ..client import FluxEvent
from ..core.events import (
    ConfigureFailure,
    ConfigureSuccess,
    Connected,
    EagerEndOfTurn,
    EndOfTurn,
    ServerError,
    ServerWarning,
    TurnInfo,
    TurnResumed,
    Unknown,
)
from ..core.lifecycle import Reconnected, StreamRolledOver

__all__ = [
    "EventTiming",
    "JsonRenderer",
    "LineRenderer",
    "LiveRenderer",
    "Renderer",
    "event_record",
]

# Carriage return, then ANSI "erase the whole line": the next text replaces the live line.
CLEAR_LINE = "\r\x1b[2K"


@attrs.frozen
class EventTiming:
    """When an event arrived, and for an ``EndOfTurn`` how long after the speech ended."""

    received: float
    """Seconds since the first audio was sent."""
    latency: float | None = None
    """End-of-turn latency in seconds (real-time pacing only; see docs/cli.md)."""


class Renderer(Protocol):
    """Shows the events of one session."""

    def event(self, event: FluxEvent, timing: EventTiming) -> None:
        """Show one event."""

    def finish(self) -> None:
        """The session ended: leave the output tidy."""


def _words(event: TurnInfo) -> list[dict[str, Any]]:
    return [
        {"word": w.word, "confidence": w.confidence, "start": w.start, "end": w.end}
        for w in event.words
    ]


def event_record(event: FluxEvent, timing: EventTiming) -> dict[str, Any]:
    """A JSON-ready description of ``event`` (the ``--json`` output; schema in docs/cli.md)."""
    record: dict[str, Any]
    if isinstance(event, TurnInfo):
        record = {
            "type": "TurnInfo",
            "event": event.event,
            "turn_index": event.turn_index,
            "transcript": event.transcript,
            "audio_window_start": event.audio_window_start,
            "audio_window_end": event.audio_window_end,
            "end_of_turn_confidence": event.end_of_turn_confidence,
            "trigger": event.trigger,
            "words": _words(event),
        }
        # flux-general-multi: every TurnInfo carries both (empty lists too); other models none.
        for key in ("languages", "languages_hinted"):
            value: tuple[str, ...] = getattr(event, key)
            if value or key in event.raw:
                record[key] = list(value)
        if isinstance(event, EndOfTurn):
            record["synthetic"] = event.synthetic
            record["latency"] = timing.latency
    elif isinstance(event, Connected):
        record = {"type": "Connected", "request_id": event.request_id}
    elif isinstance(event, ConfigureSuccess):
        record = {"type": "ConfigureSuccess", "keyterms": list(event.keyterms)}
    elif isinstance(event, ConfigureFailure | ServerWarning | ServerError):
        kind = {ConfigureFailure: "ConfigureFailure", ServerWarning: "Warning"}
        record = {
            "type": kind.get(type(event), "Error"),
            "code": event.code,
            "description": event.description,
        }
    elif isinstance(event, Reconnected | StreamRolledOver):
        record = {
            "type": type(event).__name__,
            "reason": event.reason,
            "replayed_audio_s": event.replayed_audio_s,
            "dropped_audio_s": event.dropped_audio_s,
            "dropped_audio_bytes": event.dropped_audio_bytes,
        }
    else:
        assert isinstance(event, Unknown)
        record = {"type": event.type, "raw": event.raw}
    record["received"] = round(timing.received, 3)
    return record


def describe(event: FluxEvent, timing: EventTiming) -> str:
    """One human-readable line for ``event`` (without the time)."""
    if isinstance(event, TurnInfo):
        text = f"{event.event:<15} turn {event.turn_index}  {event.transcript!r}"
        if isinstance(event, EndOfTurn):
            text += f"  trigger={event.trigger or '-'}"
            if event.synthetic:
                text += " (synthetic: the stream ended mid-turn)"
            if timing.latency is not None:
                text += f"  latency={timing.latency:.3f}s"
        return text
    if isinstance(event, Connected):
        return f"{'Connected':<15} request {event.request_id or '-'}"
    if isinstance(event, Reconnected):
        return f"{'Reconnected':<15} {event.reason} (replayed {event.replayed_audio_s:.2f} s)"
    if isinstance(event, StreamRolledOver):
        return f"{'RolledOver':<15} {event.reason} (replayed {event.replayed_audio_s:.2f} s)"
    if isinstance(event, ConfigureFailure | ServerWarning | ServerError):
        return f"{type(event).__name__:<15} {event.code}: {event.description}"
    if isinstance(event, ConfigureSuccess):
        return "ConfigureSuccess"
    return f"{'Unknown':<15} {event.raw!r}"


@attrs.define(eq=False)
class LineRenderer:
    """One line per event, for pipes and logs: ``  2.580s EndOfTurn  turn 0 '...'``."""

    out: TextIO

    def event(self, event: FluxEvent, timing: EventTiming) -> None:
        """Write the event's line."""
        self.out.write(f"{timing.received:8.3f}s {describe(event, timing)}\n")
        self.out.flush()

    def finish(self) -> None:
        """Nothing to tidy up."""


@attrs.define(eq=False)
class JsonRenderer:
    """One JSON object per line and per event (``--json``)."""

    out: TextIO

    def event(self, event: FluxEvent, timing: EventTiming) -> None:
        """Write the event's JSON line."""
        self.out.write(json.dumps(event_record(event, timing), ensure_ascii=False) + "\n")
        self.out.flush()

    def finish(self) -> None:
        """Nothing to tidy up."""


def _fit(text: str, width: int) -> str:
    """Keep the end of ``text`` within ``width`` columns (a wrapped line cannot be redrawn)."""
    if len(text) <= width:
        return text
    return "..." + text[-(width - 3) :] if width > 3 else text[:width]


@attrs.define(eq=False)
class LiveRenderer:
    """For a terminal: the open turn redrawn in place, each finished turn on its own line."""

    out: TextIO
    _live: str = attrs.field(default="", init=False)

    def _redraw(self, text: str) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)
        self._live = _fit(text, width)
        self.out.write(CLEAR_LINE + self._live)
        self.out.flush()

    def _print(self, line: str) -> None:
        self.out.write(CLEAR_LINE + line + "\n")
        self._live = ""
        self.out.flush()

    def event(self, event: FluxEvent, timing: EventTiming) -> None:
        """Update the live line, or print a finished turn or a notice."""
        if isinstance(event, EndOfTurn):
            after = (
                "" if timing.latency is None else f", {timing.latency * 1000:.0f} ms after speech"
            )
            note = " (stream ended mid-turn)" if event.synthetic else ""
            self._print(
                f"turn {event.turn_index}: {event.transcript}{note}"
                f"   [{event.trigger or 'end'}{after}]"
            )
        elif isinstance(event, TurnInfo):
            if not event.transcript and not isinstance(event, TurnResumed):
                self._redraw(f"... listening ({timing.received:.1f} s)")
                return
            mark = " (eager end?)" if isinstance(event, EagerEndOfTurn) else ""
            self._redraw(f"> turn {event.turn_index}: {event.transcript}{mark}")
        elif isinstance(event, Connected):
            self._print(f"connected (request {event.request_id or '-'})")
        else:
            self._print(describe(event, timing))

    def finish(self) -> None:
        """Clear a live line left open."""
        if self._live:
            self.out.write(CLEAR_LINE)
            self.out.flush()
            self._live = ""
