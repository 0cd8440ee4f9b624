"""Binary encodings of the SDK's flush (flush.py): the COPY rows and the tails' arrays."""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from psycopg.adapt import Dumper
from psycopg.pq import Format

from engine.sdk.buffer import Record

# Binary COPY types, in the column order of the copy_* blocks in engine/sql/queries/sdk.sql.
COPY_TYPES = ("timestamptz", "int8", "int4", "int8", "int8", "float8")


def copy_run(
    write: Callable[[tuple], None], run_pk: int, records: list[Record], ids: dict[str, int], seq: int
) -> tuple[int, dict[tuple[str, ...], list], list[tuple[int, Record]]]:
    """COPY one run's records, numbered from `seq` (the hot loop of a flush: one tuple and one
    write_row per point). Returns the next seq, the keys of the records with their key ids
    and how many records have them (keys -> [key ids, count]), and the records with a NaN or
    an infinity (rare: counted apart), each with the seq of its first value."""
    slots: dict[tuple[str, ...], list] = {}
    odd: list[tuple[int, Record]] = []
    for record in records:
        t, step, keys, values = record
        slot = slots.get(keys)
        if slot is None:
            slot = slots[keys] = [tuple(ids[k] for k in keys), 0]
        slot[1] += 1
        for kid, value in zip(slot[0], values):
            write((t, run_pk, kid, step, seq, value))
            seq += 1
        total = sum(values)
        if total - total:  # not 0.0: a value is not finite (or the sum overflowed)
            odd.append((seq - len(values), record))
    return seq, slots, odd


# -- the tails of upsert_series, as binary arrays --------------------------------------------
# psycopg dumps a list element by element in Python (~1 us each); a flush sends up to three
# arrays of ENGINE_SERIES_TAIL elements per series, so they are packed here with struct.
_ARRAY_HEADER = struct.Struct(">iiiii")  # dimensions, has nulls, element oid, length, lower bound
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class _ArrayDumper(Dumper):
    """Sends an _Array8 as it is (its `oid` is the array type)."""

    format = Format.BINARY

    def dump(self, obj: bytes) -> bytes:
        return obj


class _Array8(bytes):
    """A one-dimensional array of 8-byte elements in PostgreSQL's binary format."""

    element_oid = 0
    code = ""  # struct code of one element
    Dumper: type[_ArrayDumper] = _ArrayDumper

    @classmethod
    def of(cls, values: list) -> _Array8:
        return cls.of_elements(cls._elements(values))

    @classmethod
    def of_elements(cls, elements: list) -> _Array8:
        """From elements already in their binary form's terms (for timestamps: microseconds)."""
        n = len(elements)
        packed = struct.pack(f">{n}{cls.code}", *elements)  # the elements, 8 bytes each
        # each element is its length (the int4 8) then its 8 bytes: 12-byte slots filled
        # column by column (strided slices copy in C, no Python object per element)
        body = bytearray(12 * n)
        body[3::12] = b"\x08" * n
        for i in range(8):
            body[4 + i :: 12] = packed[i::8]
        return cls(_ARRAY_HEADER.pack(1, 0, cls.element_oid, n, 1) + body)

    @staticmethod
    def _elements(values: list) -> list:
        return values


class Int8Array(_Array8):
    element_oid, code = 20, "q"

    class Dumper(_ArrayDumper):
        oid = 1016  # bigint[]


class Float8Array(_Array8):
    element_oid, code = 701, "d"

    class Dumper(_ArrayDumper):
        oid = 1022  # double precision[]


class TimestamptzArray(_Array8):
    element_oid, code = 1184, "q"

    class Dumper(_ArrayDumper):
        oid = 1185  # timestamptz[]

    @staticmethod
    def _elements(values: list) -> list:
        return micros(values)


def micros(times: list[datetime]) -> list[int]:
    """Timestamps as PostgreSQL stores them: exact microseconds since 2000."""
    return [(t - _PG_EPOCH) // _MICROSECOND for t in times]
