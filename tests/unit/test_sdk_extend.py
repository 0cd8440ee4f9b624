"""`Writer.extend` (engine web's many rows at once) buffers exactly what `append` row by row
would, or nothing (the caller then appends row by row)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.sdk.buffer import Stream, Writer
from engine.settings import Settings

KEYS = ("loss", "acc")


class _Transport:
    where = "nowhere"

    def note_keys(self, keys: list[str]) -> None:
        pass


def _writer(room: int = 10_000) -> Writer:
    return Writer(_Transport(), Settings(buffer_max_points=room))  # type: ignore[arg-type, call-arg]


def _appended(start: int, steps: list[int | None]) -> tuple[list, int, list[int]]:
    writer, stream = _writer(), Stream(1, "acme/vision/r1", step=start)
    dropped = [
        i for i, s in enumerate(steps) if writer.append(stream, 10 + i, s, KEYS, (1.0, 2.0)) is not None
    ]
    return stream.records, stream.step, dropped


@given(
    start=st.integers(-1, 5),
    steps=st.lists(st.one_of(st.none(), st.integers(0, 12)), min_size=1, max_size=12),
)
def test_extend_buffers_what_append_would_or_nothing(start, steps):
    writer, stream = _writer(), Stream(1, "acme/vision/r1", step=start)
    records = [(10 + i, s, KEYS, (1.0, 2.0)) for i, s in enumerate(steps)]
    expected, step, dropped = _appended(start, steps)
    if writer.extend(stream, records):  # type: ignore[arg-type]
        assert not dropped and stream.records == expected and stream.step == step
        assert stream.queued == 2 * len(steps)
    else:
        assert stream.records == [] and stream.step == start and stream.queued == 0
        # it declines only what append would not keep as it is
        assert dropped or None in steps


def test_extend_takes_a_batch_of_rising_steps_and_declines_one_without_room():
    records = [(10 + s, s, KEYS, (1.0, 2.0)) for s in range(5)]
    writer, stream = _writer(), Stream(1, "acme/vision/r1", step=-1)
    assert writer.extend(stream, records) and stream.step == 4 and len(stream.records) == 5  # type: ignore[arg-type]
    small, other = _writer(room=9), Stream(2, "acme/vision/r2", step=-1)
    assert not small.extend(other, records) and other.records == []  # type: ignore[arg-type]
