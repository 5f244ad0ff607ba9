"""TurnTracker: turn state, synthetic finals, and one timeline across streams."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_sagemaker import errors
from flux_sagemaker.core.events import (
    Connected,
    EagerEndOfTurn,
    EndOfTurn,
    ServerMessage,
    StartOfTurn,
    TurnInfo,
    TurnResumed,
    Update,
    parse_server_message,
)
from flux_sagemaker.core.turns import OVERLAP_TOLERANCE, TurnTracker

REQUEST_ID = "ad12514a-0d38-4f7e-8fba-cce10d8f174c"


class Server:
    """Writes TurnInfo messages the way one Flux stream does, through the real parser."""

    def __init__(self) -> None:
        self.sequence_id = 0

    def msg(self, **fields: Any) -> ServerMessage:
        self.sequence_id += 1
        obj = {"request_id": REQUEST_ID, "sequence_id": self.sequence_id, **fields}
        return parse_server_message(json.dumps(obj).encode())

    def turn(
        self, event: str, index: int, start: float, end: float, transcript: str = "", **extra: Any
    ) -> TurnInfo:
        words = [
            {"word": w, "confidence": 0.9, "start": start + 0.1 * i, "end": start + 0.1 * i + 0.05}
            for i, w in enumerate(transcript.split())
        ]
        message = self.msg(
            type="TurnInfo",
            event=event,
            turn_index=index,
            audio_window_start=start,
            audio_window_end=end,
            transcript=transcript,
            words=words,
            end_of_turn_confidence=0.5,
            **extra,
        )
        assert isinstance(message, TurnInfo)
        return message


def feed(tracker: TurnTracker, events: Sequence[ServerMessage]) -> list[ServerMessage]:
    out = []
    for event in events:
        result = tracker.observe(event)
        if result is not None:
            out.append(result)
    return out


def across_a_replay(
    first: Sequence[ServerMessage], offset: float | None, second: Sequence[ServerMessage]
) -> list[ServerMessage]:
    """What a tracker delivers of stream B's ``second`` events, after stream A's ``first``, B
    replaying from session time ``offset`` (``None``: nothing replayed)."""
    tracker = TurnTracker()
    feed(tracker, first)
    tracker.start_stream(offset)
    return feed(tracker, second)


def summary(events: list[ServerMessage]) -> list[tuple[str, int, float]]:
    out = []
    for e in events:
        assert isinstance(e, TurnInfo)
        out.append((e.event, e.turn_index, e.audio_window_end))
    return out


def test_plain_turn_passes_through_unchanged() -> None:
    s = Server()
    tracker = TurnTracker()
    connected = s.msg(type="Connected")
    events = [
        connected,
        s.turn("Update", 0, 0.0, 0.24),
        s.turn("Update", 0, 0.0, 0.48),
        s.turn("StartOfTurn", 0, 0.0, 0.72, "hello"),
        s.turn("Update", 0, 0.0, 0.96, "hello there"),
        s.turn("EndOfTurn", 0, 0.0, 1.3, "hello there", trigger="model"),
        s.turn("Update", 1, 1.3, 1.54),
    ]
    out = feed(tracker, events)
    assert out == events
    assert all(a is b for a, b in zip(out, events, strict=True))  # no copies without offsets
    assert isinstance(out[0], Connected)
    assert not tracker.turn_open
    assert tracker.turns_completed == 1
    assert tracker.last_end_of_turn_audio_end == 1.3
    assert tracker.open_turn_audio_start is None
    assert tracker.stream_ended() is None


def test_state_follows_the_turn() -> None:
    s = Server()
    tracker = TurnTracker()
    assert tracker.last_end_of_turn_audio_end is None
    tracker.observe(s.turn("Update", 0, 0.0, 0.24))
    assert not tracker.turn_open
    tracker.observe(s.turn("StartOfTurn", 0, 0.0, 0.48, "hi"))
    assert tracker.turn_open
    assert tracker.open_turn_audio_start == 0.0
    tracker.observe(s.turn("EndOfTurn", 0, 0.0, 0.8, "hi", trigger="timeout"))
    assert not tracker.turn_open
    assert tracker.turns_completed == 1


def test_eager_cycles() -> None:
    s = Server()
    tracker = TurnTracker()
    events = [
        s.turn("StartOfTurn", 0, 0.0, 0.5, "I want"),
        s.turn("EagerEndOfTurn", 0, 0.0, 1.0, "I want to"),
        s.turn("TurnResumed", 0, 0.0, 1.25, "I want to go"),
        s.turn("EagerEndOfTurn", 0, 0.0, 1.5, "I want to go home"),
        s.turn("TurnResumed", 0, 0.0, 1.75, "I want to go home now"),
        s.turn("EagerEndOfTurn", 0, 0.0, 2.0, "I want to go home now"),
    ]
    assert feed(tracker, events) == events
    assert isinstance(events[1], EagerEndOfTurn)
    assert isinstance(events[2], TurnResumed)
    assert tracker.turn_open
    # The stream ends during the eager wait: the eager transcript becomes the final.
    final = tracker.stream_ended()
    assert isinstance(final, EndOfTurn)
    assert final.synthetic
    assert final.trigger is None
    assert final.transcript == "I want to go home now"
    assert final.turn_index == 0
    assert final.audio_window_end == 2.0
    assert final.raw == events[-1].raw
    assert not tracker.turn_open
    assert tracker.turns_completed == 1
    assert tracker.last_end_of_turn_audio_end == 2.0


def test_update_opens_turn_without_start() -> None:
    s = Server()
    tracker = TurnTracker()
    tracker.observe(s.turn("Update", 0, 0.0, 0.24))
    assert not tracker.turn_open
    tracker.observe(s.turn("Update", 0, 0.2, 0.48, "good"))
    assert tracker.turn_open
    assert tracker.open_turn_audio_start == 0.2
    tracker.observe(s.turn("Update", 0, 0.2, 0.72, "good morning"))
    # A late StartOfTurn for the Update-opened turn is still delivered once.
    start = s.turn("StartOfTurn", 0, 0.2, 0.8, "good morning")
    assert tracker.observe(start) is start
    assert tracker.observe(s.turn("StartOfTurn", 0, 0.2, 0.9, "good morning")) is None
    final = tracker.stream_ended()
    assert final is not None
    assert final.synthetic
    assert final.transcript == "good morning"
    assert final.audio_window_start == 0.2


def test_stream_end_after_end_of_turn_gives_nothing() -> None:
    s = Server()
    tracker = TurnTracker()
    feed(
        tracker,
        [
            s.turn("StartOfTurn", 0, 0.0, 0.5, "yes"),
            s.turn("EndOfTurn", 0, 0.0, 0.9, "yes", trigger="manual"),
            s.turn("Update", 1, 0.9, 1.15),
        ],
    )
    assert tracker.stream_ended() is None
    assert tracker.turns_completed == 1


def test_open_turn_with_empty_last_transcript_gives_nothing() -> None:
    s = Server()
    tracker = TurnTracker()
    tracker.observe(s.turn("StartOfTurn", 0, 0.0, 0.5, "um"))
    tracker.observe(s.turn("Update", 0, 0.0, 0.75, ""))
    assert tracker.turn_open
    assert tracker.stream_ended() is None
    assert not tracker.turn_open
    assert tracker.turns_completed == 0


def test_unknown_event_is_neutral() -> None:
    s = Server()
    tracker = TurnTracker()
    tracker.observe(s.turn("StartOfTurn", 0, 0.0, 0.5, "so"))
    odd = s.turn("SpeakerChanged", 0, 0.0, 0.6, "")
    assert type(odd) is TurnInfo
    assert tracker.observe(odd) is odd
    assert tracker.turn_open
    final = tracker.stream_ended()
    assert final is not None
    assert final.transcript == "so"


def test_new_index_abandons_turn_without_end() -> None:
    s = Server()
    tracker = TurnTracker()
    tracker.observe(s.turn("StartOfTurn", 0, 0.0, 0.5, "lost"))
    # The EndOfTurn of turn 0 never came; an empty Update of turn 1 says it is over.
    tracker.observe(s.turn("Update", 1, 0.9, 1.2))
    assert not tracker.turn_open
    assert tracker.turns_completed == 1
    assert tracker.stream_ended() is None
    # A different index with a transcript switches the open turn.
    tracker.observe(s.turn("StartOfTurn", 1, 1.2, 1.5, "first"))
    tracker.observe(s.turn("Update", 2, 1.9, 2.2, "second"))
    assert tracker.turn_open
    assert tracker.open_turn_audio_start == 1.9
    # A stale event of a completed turn is dropped.
    tracker.observe(s.turn("EndOfTurn", 2, 1.9, 2.5, "second"))
    assert tracker.observe(s.turn("Update", 1, 1.2, 1.7, "first")) is None


def test_end_of_turn_without_open_turn_counts() -> None:
    s = Server()
    tracker = TurnTracker()
    eot = s.turn("EndOfTurn", 0, 0.0, 5.0, "", trigger="timeout")
    assert tracker.observe(eot) is eot
    assert tracker.turns_completed == 1
    assert tracker.last_end_of_turn_audio_end == 5.0


def test_rollover_continues_indexes_and_times() -> None:
    """Stream A ends cleanly at 10 s; stream B carries on from there."""
    a, b = Server(), Server()
    tracker = TurnTracker()
    feed(
        tracker,
        [
            a.turn("StartOfTurn", 0, 0.0, 1.0, "one"),
            a.turn("EndOfTurn", 0, 0.0, 2.0, "one"),
            a.turn("StartOfTurn", 1, 2.0, 3.0, "two"),
            a.turn("Update", 1, 2.0, 9.5, "two three"),
        ],
    )
    final = tracker.stream_ended()
    assert final is not None
    assert final.turn_index == 1
    assert tracker.turns_completed == 2
    tracker.start_stream(10.0)
    assert tracker.audio_offset == 10.0
    raw_start = b.turn("StartOfTurn", 0, 0.5, 1.0, "four five")
    start = tracker.observe(raw_start)
    assert isinstance(start, StartOfTurn)
    assert start.turn_index == 2
    assert start.audio_window_start == 10.5
    assert start.audio_window_end == 11.0
    assert [(w.start, w.end) for w in start.words] == [
        (pytest.approx(10.5), pytest.approx(10.55)),
        (pytest.approx(10.6), pytest.approx(10.65)),
    ]
    assert start.raw == raw_start.raw  # raw stays as received
    assert start.raw["turn_index"] == 0
    assert start.sequence_id == raw_start.sequence_id
    end = tracker.observe(b.turn("EndOfTurn", 0, 0.5, 1.5, "four five", trigger="model"))
    assert isinstance(end, EndOfTurn)
    assert end.turn_index == 2
    assert end.trigger == "model"
    assert not end.synthetic
    assert tracker.last_end_of_turn_audio_end == 11.5
    nxt = tracker.observe(b.turn("Update", 1, 1.5, 1.75))
    assert isinstance(nxt, TurnInfo)
    assert nxt.turn_index == 3


def test_word_without_timings_keeps_none() -> None:
    tracker = TurnTracker()
    tracker.start_stream(3.0)
    raw = parse_server_message(
        json.dumps(
            {
                "type": "TurnInfo",
                "event": "StartOfTurn",
                "turn_index": 0,
                "audio_window_start": 0,
                "audio_window_end": 0.5,
                "transcript": "hi",
                "words": [{"word": "hi", "confidence": 0.9}],
            }
        )
    )
    out = tracker.observe(raw)
    assert isinstance(out, TurnInfo)
    assert out.words[0].start is None
    assert out.words[0].end is None
    assert out.audio_window_start == 3.0


def test_reconnect_mid_turn_replays_without_duplicates() -> None:
    """A fails during turn 1; B replays from the end of turn 0 (4.0 s)."""
    a, b = Server(), Server()
    tracker = TurnTracker()
    delivered = feed(
        tracker,
        [
            a.turn("StartOfTurn", 0, 0.0, 1.0, "alpha"),
            a.turn("EndOfTurn", 0, 0.0, 4.0, "alpha beta"),
            a.turn("Update", 1, 4.0, 4.25),
            a.turn("StartOfTurn", 1, 4.0, 5.0, "gamma"),
            a.turn("Update", 1, 4.0, 6.0, "gamma delta"),
        ],
    )
    assert len(delivered) == 5
    assert tracker.turn_open
    assert tracker.open_turn_audio_start == 4.0
    # Failure: no stream_ended(); the next stream replays from 4.0 s.
    tracker.start_stream(4.0)
    out = feed(
        tracker,
        [
            b.turn("Update", 0, 0.0, 0.25),  # re-covers reported audio: dropped
            b.turn("StartOfTurn", 0, 0.0, 1.0, "gamma"),  # turn 1 already started: dropped
            b.turn("Update", 0, 0.0, 2.0, "gamma delta"),  # at 6.0 s, already reported: dropped
            b.turn("Update", 0, 0.0, 2.25, "gamma delta epsilon"),
            b.turn("EndOfTurn", 0, 0.0, 2.5, "gamma delta epsilon"),
            b.turn("Update", 1, 2.5, 2.75),
        ],
    )
    assert summary(out) == [
        ("Update", 1, 6.25),
        ("EndOfTurn", 1, 6.5),
        ("Update", 2, 6.75),
    ]
    assert tracker.turns_completed == 2


@pytest.mark.parametrize("then_resumed", [False, True])
def test_a_replay_does_not_predict_the_open_turns_end_twice(then_resumed: bool) -> None:
    """A fails between EagerEndOfTurn and EndOfTurn; B, replaying the turn, predicts its end
    again. That repeat is dropped while the first prediction stands; after a TurnResumed,
    a new prediction passes again."""
    a, b = Server(), Server()
    said = [
        a.turn("StartOfTurn", 0, 0.0, 0.5, "a table"),
        a.turn("EagerEndOfTurn", 0, 0.0, 1.5, "a table for two"),
    ]
    replayed = [
        b.turn("StartOfTurn", 0, 0.0, 0.5, "a table"),
        b.turn("EagerEndOfTurn", 0, 0.0, 1.5, "a table for two"),
    ]
    if then_resumed:
        replayed += [
            b.turn("TurnResumed", 0, 0.0, 1.75, "a table for two please"),
            b.turn("EagerEndOfTurn", 0, 0.0, 2.0, "a table for two please"),
        ]
    replayed.append(b.turn("EndOfTurn", 0, 0.0, 2.25, "a table for two please"))
    out = across_a_replay(said, 0.0, replayed)
    expected = [("TurnResumed", 0, 1.75), ("EagerEndOfTurn", 0, 2.0)] if then_resumed else []
    assert summary(out) == [*expected, ("EndOfTurn", 0, 2.25)]


def test_a_prediction_withdrawn_before_the_replay_is_not_carried() -> None:
    """EagerEndOfTurn then TurnResumed on A: no prediction stands, so B's passes."""
    a, b = Server(), Server()
    out = across_a_replay(
        [
            a.turn("StartOfTurn", 0, 0.0, 0.5, "a table"),
            a.turn("EagerEndOfTurn", 0, 0.0, 1.0, "a table for"),
            a.turn("TurnResumed", 0, 0.0, 1.25, "a table for two"),
        ],
        0.0,
        [b.turn("EagerEndOfTurn", 0, 0.0, 1.5, "a table for two")],
    )
    assert summary(out) == [("EagerEndOfTurn", 0, 1.5)]


def test_a_replay_does_not_repeat_a_withdrawn_prediction() -> None:
    """A predicted the end, withdrew it, and failed; B, replaying the turn, predicts and
    withdraws it again over the audio A reported: the application already had both."""
    a, b = Server(), Server()
    out = across_a_replay(
        [
            a.turn("StartOfTurn", 0, 0.0, 0.5, "a table"),
            a.turn("EagerEndOfTurn", 0, 0.0, 1.0, "a table for"),
            a.turn("TurnResumed", 0, 0.0, 1.25, "a table for two"),
            a.turn("Update", 0, 0.0, 1.5, "a table for two"),
        ],
        0.0,
        [
            b.turn("StartOfTurn", 0, 0.0, 0.5, "a table"),
            b.turn("EagerEndOfTurn", 0, 0.0, 1.0, "a table for"),
            b.turn("TurnResumed", 0, 0.0, 1.25, "a table for two"),
            b.turn("Update", 0, 0.0, 1.5, "a table for two"),
            b.turn("EagerEndOfTurn", 0, 0.0, 1.75, "a table for two"),
            b.turn("EndOfTurn", 0, 0.0, 2.0, "a table for two"),
        ],
    )
    assert summary(out) == [("EagerEndOfTurn", 0, 1.75), ("EndOfTurn", 0, 2.0)]


def test_a_replay_does_not_withdraw_a_prediction_made_again_with_the_same_words() -> None:
    """A predicted the end, withdrew it (the user went on without a word), predicted it again
    with the same words, and failed. B's replay withdraws the first prediction again: the
    application saw that already, and still holds the second, which Flux did not withdraw."""
    a, b = Server(), Server()
    tracker = TurnTracker()
    said = [
        ("StartOfTurn", 0.5, "a table"),
        ("EagerEndOfTurn", 1.0, "a table for two"),
        ("TurnResumed", 1.25, "a table for two"),
        ("EagerEndOfTurn", 1.5, "a table for two"),
        ("Update", 1.75, "a table for two"),
    ]
    out = feed(tracker, [a.turn(kind, 0, 0.0, end, text) for kind, end, text in said])
    assert len(out) == len(said)
    tracker.start_stream(0.0)
    replayed = [*said, ("EndOfTurn", 2.0, "a table for two")]
    out = feed(tracker, [b.turn(kind, 0, 0.0, end, text) for kind, end, text in replayed])
    assert summary(out) == [("EndOfTurn", 0, 2.0)]
    # Withdrawn after the replay, the second prediction is withdrawn for the application too.
    replayed = [*said, ("TurnResumed", 2.0, "a table for two"), ("EndOfTurn", 2.5, "a table")]
    out = across_a_replay(
        [a.turn(kind, 0, 0.0, end, text) for kind, end, text in said],
        0.0,
        [b.turn(kind, 0, 0.0, end, text) for kind, end, text in replayed],
    )
    assert summary(out) == [("TurnResumed", 0, 2.0), ("EndOfTurn", 0, 2.5)]


def test_a_replay_that_predicts_another_end_delivers_it() -> None:
    """A predicted the end after "a table for two" and failed; B, replaying the turn, predicts
    it after "a table for two please" instead. That prediction is new: the EndOfTurn carries its
    transcript, and Flux promises it matches the EagerEndOfTurn just before it."""
    a, b = Server(), Server()
    out = across_a_replay(
        [
            a.turn("StartOfTurn", 0, 0.0, 0.5, "a table"),
            a.turn("EagerEndOfTurn", 0, 0.0, 1.5, "a table for two"),
        ],
        0.0,
        [
            b.turn("StartOfTurn", 0, 0.0, 0.5, "a table"),
            b.turn("Update", 0, 0.0, 1.75, "a table for two please"),
            b.turn("EagerEndOfTurn", 0, 0.0, 2.0, "a table for two please"),
            b.turn("EndOfTurn", 0, 0.0, 2.25, "a table for two please"),
        ],
    )
    assert summary(out) == [("Update", 0, 1.75), ("EagerEndOfTurn", 0, 2.0), ("EndOfTurn", 0, 2.25)]
    final = out[-1]
    assert isinstance(final, EndOfTurn)
    assert isinstance(out[-2], EagerEndOfTurn)
    assert out[-2].transcript == final.transcript


def test_a_replay_that_predicts_the_end_at_the_same_place_with_other_words_delivers_it() -> None:
    """B, replaying the turn with other settings (redaction, keyterms), predicts its end where A
    did, with other words: a new prediction, not A's again, and the EndOfTurn carries its words."""
    a, b = Server(), Server()
    out = across_a_replay(
        [
            a.turn("StartOfTurn", 0, 0.0, 0.5, "a table"),
            a.turn("EagerEndOfTurn", 0, 0.0, 1.5, "a table for two"),
        ],
        0.0,
        [
            b.turn("StartOfTurn", 0, 0.0, 0.5, "a table"),
            b.turn("EagerEndOfTurn", 0, 0.0, 1.5, "a table for [NUMBER]"),
            b.turn("EndOfTurn", 0, 0.0, 1.75, "a table for [NUMBER]"),
        ],
    )
    assert summary(out) == [("EagerEndOfTurn", 0, 1.5), ("EndOfTurn", 0, 1.75)]
    assert [e.transcript for e in out if isinstance(e, TurnInfo)] == ["a table for [NUMBER]"] * 2


def test_a_replay_that_predicts_another_end_within_reported_audio_delivers_it() -> None:
    """As above, but B's prediction falls inside the audio A reported after its own: A made no
    prediction there, so it is new (not one A made and withdrew)."""
    a, b = Server(), Server()
    out = across_a_replay(
        [
            a.turn("StartOfTurn", 0, 0.0, 0.5, "a table"),
            a.turn("EagerEndOfTurn", 0, 0.0, 1.5, "a table for two"),
            a.turn("Update", 0, 0.0, 2.0, "a table for two"),
        ],
        0.0,
        [
            b.turn("StartOfTurn", 0, 0.0, 0.5, "a table"),
            b.turn("EagerEndOfTurn", 0, 0.0, 1.75, "a table for two please"),
            b.turn("EndOfTurn", 0, 0.0, 2.25, "a table for two please"),
        ],
    )
    assert summary(out) == [("EagerEndOfTurn", 0, 1.75), ("EndOfTurn", 0, 2.25)]


def test_a_new_stream_without_replay_delivers_its_own_prediction() -> None:
    """Opus or containers: nothing is replayed, so B's EagerEndOfTurn predicts the end of new
    speech, not again A's; the EndOfTurn then matches the prediction just before it."""
    a, b = Server(), Server()
    out = across_a_replay(
        [
            a.turn("StartOfTurn", 0, 0.0, 0.5, "I want"),
            a.turn("EagerEndOfTurn", 0, 0.0, 1.0, "I want pizza"),
        ],
        None,
        [
            b.turn("StartOfTurn", 0, 0.0, 0.5, "with cheese"),  # turn 0 already started
            b.turn("EagerEndOfTurn", 0, 0.0, 0.75, "with cheese"),
            b.turn("EndOfTurn", 0, 0.0, 1.0, "with cheese"),
        ],
    )
    assert summary(out) == [("EagerEndOfTurn", 0, 1.75), ("EndOfTurn", 0, 2.0)]


def test_replay_overlap_drops_finalized_turn() -> None:
    """B's replay starts 1 s before the last EndOfTurn (the buffer was trimmed coarsely)."""
    a, b = Server(), Server()
    tracker = TurnTracker()
    feed(
        tracker,
        [
            a.turn("StartOfTurn", 0, 0.0, 1.0, "one"),
            a.turn("EndOfTurn", 0, 0.0, 3.0, "one two"),
        ],
    )
    tracker.start_stream(2.0)
    out = feed(
        tracker,
        [
            # B re-detects the tail of turn 0, ending a frame later than A did.
            b.turn("StartOfTurn", 0, 0.0, 0.5, "two"),
            b.turn("EndOfTurn", 0, 0.0, 1.0 + OVERLAP_TOLERANCE / 2, "two"),
            b.turn("Update", 1, 1.05, 1.3),
            b.turn("StartOfTurn", 1, 1.05, 1.6, "three"),
            b.turn("EndOfTurn", 1, 1.05, 2.0, "three"),
        ],
    )
    assert summary(out) == [
        ("Update", 1, 3.3),
        ("StartOfTurn", 1, 3.6),
        ("EndOfTurn", 1, 4.0),
    ]
    assert tracker.turns_completed == 2
    assert tracker.last_end_of_turn_audio_end == 4.0


def test_replay_overlap_keeps_turn_extending_past_final() -> None:
    a, b = Server(), Server()
    tracker = TurnTracker()
    tracker.observe(a.turn("EndOfTurn", 0, 0.0, 3.0, "one two"))
    tracker.start_stream(2.0)
    # B merged the replayed tail with new speech: repeated words beat lost words.
    out = feed(
        tracker,
        [
            b.turn("StartOfTurn", 0, 0.0, 1.5, "two three"),
            b.turn("EndOfTurn", 0, 0.0, 2.0, "two three"),
        ],
    )
    assert [index for _, index, _ in summary(out)] == [1, 1]


def test_start_stream_validation() -> None:
    tracker = TurnTracker()
    tracker.start_stream(0.0)
    tracker.start_stream(5.0)
    for bad in (4.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(errors.ValidationError, match="audio_offset_s"):
            tracker.start_stream(bad)


def test_update_is_session_event_type() -> None:
    s = Server()
    tracker = TurnTracker()
    tracker.start_stream(1.0)
    out = tracker.observe(s.turn("Update", 0, 0.0, 0.25))
    assert isinstance(out, Update)
    assert out.audio_window_end == 1.25


def test_replay_from_session_start() -> None:
    """The replay buffer was never trimmed: B hears everything again from 0 s."""
    a, b = Server(), Server()
    tracker = TurnTracker()
    feed(
        tracker,
        [
            a.turn("StartOfTurn", 0, 0.0, 0.5, "hi"),
            a.turn("EndOfTurn", 0, 0.0, 1.0, "hi"),
            a.turn("StartOfTurn", 1, 1.0, 1.5, "there"),
        ],
    )
    tracker.start_stream(0.0)
    out = feed(
        tracker,
        [
            b.turn("StartOfTurn", 0, 0.0, 0.5, "hi"),
            b.turn("EndOfTurn", 0, 0.0, 1.0, "hi"),
            b.turn("StartOfTurn", 1, 1.0, 1.5, "there"),  # turn 1 already started
            b.turn("Update", 1, 1.0, 1.75, "there you"),
            b.turn("EndOfTurn", 1, 1.0, 2.0, "there you go"),
        ],
    )
    assert summary(out) == [("Update", 1, 1.75), ("EndOfTurn", 1, 2.0)]
    assert tracker.turns_completed == 2


def test_index_rewritten_without_time_offset() -> None:
    a, b = Server(), Server()
    tracker = TurnTracker()
    tracker.observe(a.turn("EndOfTurn", 0, 0.0, 1.0, "hi"))
    tracker.start_stream(0.0)
    raw = b.turn("StartOfTurn", 0, 0.0, 1.5, "hi there")
    out = tracker.observe(raw)
    assert isinstance(out, StartOfTurn)
    assert out.turn_index == 1
    assert out.audio_window_end == 1.5
    assert out.words == raw.words


def test_unknown_offset_continues_after_delivered_audio() -> None:
    """Opus or containerized audio: bytes give no seconds, so the client passes None."""
    a, b = Server(), Server()
    tracker = TurnTracker()
    feed(
        tracker,
        [
            a.turn("StartOfTurn", 0, 0.0, 1.0, "one"),
            a.turn("EndOfTurn", 0, 0.0, 2.0, "one"),
            a.turn("Update", 1, 2.0, 2.5),
        ],
    )
    tracker.start_stream(None)
    assert tracker.audio_offset == 2.5
    out = feed(
        tracker,
        [
            b.turn("Update", 0, 0.0, 0.25),  # no replay rules: kept
            b.turn("StartOfTurn", 0, 0.0, 0.5, "two"),
            b.turn("EndOfTurn", 0, 0.0, 1.0, "two"),
        ],
    )
    assert summary(out) == [("Update", 1, 2.75), ("StartOfTurn", 1, 3.0), ("EndOfTurn", 1, 3.5)]
    tracker.start_stream(None)
    assert tracker.audio_offset == 3.5
    with pytest.raises(errors.ValidationError, match="audio_offset_s"):
        tracker.start_stream(1.0)
    assert tracker.audio_offset == 3.5
    assert tracker.turns_completed == 2


def test_audio_heard_until_is_the_latest_window_on_the_session_timeline() -> None:
    """What the server confirmed processing: the largest window end seen, between turns too,
    in session time after a new stream; a replayed stream's older windows do not lower it."""
    tracker = TurnTracker()
    assert tracker.audio_heard_until == 0.0
    first = Server()
    feed(tracker, [first.turn("Update", 0, 0.0, 0.24), first.turn("Update", 0, 0.0, 0.48)])
    assert tracker.audio_heard_until == 0.48
    tracker.start_stream(0.2)  # a replay from 0.2 s: its clock starts there
    second = Server()
    feed(tracker, [second.turn("Update", 0, 0.0, 0.24)])  # 0.44 s in session time
    assert tracker.audio_heard_until == 0.48
    feed(tracker, [second.turn("Update", 0, 0.0, 0.72)])
    assert tracker.audio_heard_until == pytest.approx(0.92)


# ---- property: a deterministic replay delivers the session once ------------------------------

_STEP = 0.25  # Flux reports about every 0.25 s of audio; multiples of it are exact floats


@st.composite
def flux_session(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The events one stream sends for a whole session, as dicts of session-level fields:
    quiet Updates between turns, and turns with Updates and eager cycles."""
    events: list[dict[str, Any]] = []
    end = 0.0

    def add(event: str, index: int, start: float, transcript: str) -> None:
        nonlocal end
        end += _STEP
        events.append(
            {"event": event, "index": index, "start": start, "end": end, "text": transcript}
        )

    n_turns = draw(st.integers(1, 3))
    for index in range(n_turns):
        for _ in range(draw(st.integers(0, 2))):
            add("Update", index, end, "")
        start, words = end, ["w0"]
        add("StartOfTurn", index, start, " ".join(words))
        for _ in range(draw(st.integers(0, 2))):
            words.append(f"w{len(words)}")
            add("Update", index, start, " ".join(words))
        for _ in range(draw(st.integers(0, 2))):  # eager cycles
            add("EagerEndOfTurn", index, start, " ".join(words))
            if draw(st.booleans()):  # or the user went on without a word (a breath, a cough)
                words.append(f"w{len(words)}")
            add("TurnResumed", index, start, " ".join(words))
        if draw(st.booleans()):
            add("EagerEndOfTurn", index, start, " ".join(words))
        if index < n_turns - 1 or draw(st.booleans()):
            add("EndOfTurn", index, start, " ".join(words))
    return events


def _as_stream(server: Server, event: dict[str, Any], offset: float, base: int) -> TurnInfo:
    return server.turn(
        event["event"],
        event["index"] - base,
        event["start"] - offset,
        event["end"] - offset,
        event["text"],
    )


@given(flux_session(), st.data())
def test_a_deterministic_replay_delivers_each_event_once(
    session: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Stream A fails after any event; B hears the audio again from where the client's replay
    starts (the last EndOfTurn, or later when no turn is open) and, like a deterministic Flux,
    says again what A said about it. The application sees the session as one stream said it."""
    failed_after = data.draw(st.integers(1, len(session)))
    tracker = TurnTracker()
    a, b = Server(), Server()
    out = feed(tracker, [_as_stream(a, e, 0.0, 0) for e in session[:failed_after]])
    finals = [e for e in session[:failed_after] if e["event"] == "EndOfTurn"]
    offset = finals[-1]["end"] if finals else 0.0
    if not tracker.turn_open:  # the client then replays only the tail of the quiet audio
        heard = session[failed_after - 1]["end"]
        offset = data.draw(st.sampled_from([offset, max(offset, heard - 3.0), heard]))
    tracker.start_stream(offset)
    out += feed(
        tracker,
        [_as_stream(b, e, offset, len(finals)) for e in session if e["end"] > offset],
    )
    expected = [(e["event"], e["index"], e["end"], e["text"]) for e in session]
    got = []
    for e in out:
        assert isinstance(e, TurnInfo)
        got.append((e.event, e.turn_index, e.audio_window_end, e.transcript))
    assert got == expected
