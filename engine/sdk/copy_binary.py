"""Binary encodings of the SDK's flush (flush.py): the COPY rows and the tails' arrays."""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable
from itertools import chain
from operator import itemgetter
from typing import NamedTuple

from psycopg.adapt import Dumper
from psycopg.pq import Format

from engine.clock import to_micros
from engine.sdk.buffer import Record

# Binary COPY types, in the column order of the copy_* blocks in engine/sql/queries/sdk.sql
# (the rows below are written in these types).
COPY_TYPES = ("timestamptz", "int8", "int4", "int8", "int8", "float8")


# The binary COPY stream, written by the SDK itself in blocks (psycopg's `write_row` dumps
# each field of each row through its adapters, several times slower than the columns below):
# the signature, flags and header extension length, then the rows, then the trailer.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
COPY_TRAILER = b"\xff\xff"
# One row: the field count, then each field's length and bytes, in COPY_TYPES' order.
_ROW = struct.Struct(">hiqiqiiiqiqid")
_ROW_SIZE = _ROW.size
# Offsets in a row of the time, step, seq and value fields (after each one's length).
_TIME, _STEP, _SEQ, _VALUE = 6, 38, 50, 62
# Records with the same keys are encoded column by column from this many on (below, a
# row at a time costs less than setting up the columns) and at most this many points at a
# time (the block's memory).
_COLUMNS_FROM = 16
_BLOCK_POINTS = 1 << 14
_BIG_ENDIAN = sys.byteorder == "big"
_VALUES = itemgetter(3)  # a record's values


class Block(NamedTuple):
    """Consecutive records of a run with the same keys, at most a block's points."""

    records: list[Record]
    kids: tuple[int, ...]  # their keys' ids
    values: list[float]  # their values, laid end to end
    seq: int  # the seq of the first value


class Layout(NamedTuple):
    """A run's records as COPY blocks, numbered from a seq (`layout`)."""

    seq: int  # the seq after the last value
    slots: dict[tuple[str, ...], list]  # keys -> [key ids, how many records have them]
    odd: list[tuple[int, Record]]  # records with a NaN or an infinity, with their first value's seq
    blocks: list[Block]


def layout(records: list[Record], ids: dict[str, int], seq: int) -> Layout:
    """A run's records as blocks to COPY, their values numbered from `seq`: the keys of the
    records with their key ids and how many records have them, and the records with a NaN or
    an infinity (rare: counted apart), each with the seq of its first value.

    Consecutive records with the same keys (a run logs the same keys call after call) make
    one block, encoded column by column (`encode`, the hot path of a flush)."""
    slots: dict[tuple[str, ...], list] = {}
    odd: list[tuple[int, Record]] = []
    blocks: list[Block] = []
    i, end = 0, len(records)
    while i < end:
        keys = records[i][2]
        slot = slots.get(keys)
        if slot is None:
            slot = slots[keys] = [tuple(ids[k] for k in keys), 0]
        # the records from i on with these keys (the same tuple object while a run logs the
        # same keys), at most a block's points
        j, stop = i + 1, min(end, i + max(1, _BLOCK_POINTS // max(1, len(keys))))
        while j < stop and (records[j][2] is keys or records[j][2] == keys):
            j += 1
        block = records[i:j]
        slot[1] += j - i
        values = list(chain.from_iterable(map(_VALUES, block)))
        blocks.append(Block(block, slot[0], values, seq))
        first = seq
        seq += len(values)
        total = sum(values)
        if total - total:  # not 0.0: a value is not finite (or the sum overflowed)
            for record in block:
                total = sum(record[3])
                if total - total:
                    odd.append((first, record))
                first += len(record[3])
        i = j
    return Layout(seq, slots, odd, blocks)


def encode(run_pk: int, block: Block) -> bytearray:
    """A block's binary COPY rows (between COPY_HEADER and COPY_TRAILER)."""
    if len(block.records) >= _COLUMNS_FROM:
        return _columns(run_pk, block.kids, block.records, block.values, block.seq)
    return _rows(run_pk, block.kids, block.records, block.seq)


def _rows(run_pk: int, kids: tuple[int, ...], records: list[Record], seq: int) -> bytearray:
    """The rows of a few records, one at a time."""
    out = bytearray()
    pack = _ROW.pack
    for t, step, _, values in records:
        for kid, value in zip(kids, values):
            out += pack(6, 8, t, 8, run_pk, 4, kid, 8, step, 8, seq, 8, value)
            seq += 1
    return out


def _columns(
    run_pk: int, kids: tuple[int, ...], records: list[Record], values: list[float], seq: int
) -> bytearray:
    """The rows of records with the same keys (`values`: theirs, laid end to end): the
    constant fields from one record's rows repeated, then each varying field's bytes put in
    place with strided slices (in C, no Python object per row)."""
    n, k = len(records), len(kids)
    row = b"".join(_ROW.pack(6, 8, 0, 8, run_pk, 4, kid, 8, 0, 8, 0, 8, 0.0) for kid in kids)
    out = bytearray(row) * n
    stride = _ROW_SIZE * k
    # a record's time and step are in each of its k rows
    for offset, column in ((_TIME, [r[0] for r in records]), (_STEP, [r[1] for r in records])):
        packed = _big_endian("q", column)
        for b in range(8):
            byte = packed[b::8]
            for at in range(offset + b, stride, _ROW_SIZE):
                out[at::stride] = byte
    # seq and value change from row to row
    for offset, packed in (
        (_SEQ, _big_endian("q", range(seq, seq + n * k))),
        (_VALUE, _big_endian("d", values)),
    ):
        for b in range(8):
            out[offset + b :: _ROW_SIZE] = packed[b::8]
    return out


def _big_endian(code: str, values: Iterable) -> bytes:
    """8-byte numbers in network byte order."""
    packed = array(code, values)
    if not _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


# -- the tails of upsert_series, as binary arrays --------------------------------------------
# psycopg dumps a list element by element in Python (~1 us each); a flush sends up to three
# arrays of ENGINE_SERIES_TAIL elements per series, so they are packed here with struct.
_ARRAY_HEADER = struct.Struct(">iiiii")  # dimensions, has nulls, element oid, length, lower bound


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
        """From elements already in their binary form's terms (for timestamps: clock.to_micros)."""
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
        return [to_micros(t) for t in values]
