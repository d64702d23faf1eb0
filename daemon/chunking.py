"""Content-defined chunking: cut a byte stream where its content says, so an edit moves few cuts.

FastCDC 2020 (Xia et al., "The Design of Fast Content-Defined Chunking for Data Deduplication
Based Storage Systems", IEEE TPDS 2020) through ``pyfastcdc``, a Cython port of the v2020 module
of nlfiedler/fastcdc-rs (same cut points as that crate). It chunks ~2 GiB/s on this machine's
page cache, far above the 300 MiB/s the store needs, so no chunker of our own is kept.

Only this module imports ``pyfastcdc``: the rest of Strandline sees offsets, lengths and bytes.
A stream is read through a buffer of about twice ``max_size``, never whole.

The cut points depend on ``ChunkParams`` alone: stores keep the parameters a file was chunked
with implicitly (the recipe lists the chunks), so changing the defaults later only costs
deduplication against chunks cut the old way, never correctness.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from pyfastcdc import FastCDC

__all__ = [
    "DEFAULT_PARAMS",
    "ChunkParams",
    "Readable",
    "chunk_boundaries",
    "iter_buffer_chunks",
    "iter_chunk_windows",
    "iter_chunks",
]

KiB: Final = 1024


class Readable(Protocol):
    """A binary stream that fills a buffer: ``io.FileIO``, ``io.BufferedReader``, a socket file."""

    def readinto(self, buffer: memoryview, /) -> int: ...


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """FastCDC sizes in bytes. Chunks average about ``avg_size + min_size`` (the paper's cut-point skipping).

    The defaults (16/64/256 KiB, ~80 KiB average) are what the append target asks for: an append
    re-stores the old last chunk (the one cut by end-of-file) plus the new bytes, so the overhead
    per append is about one average chunk; smaller chunks would cut that but cost one file, one
    fsync and one recipe entry each (a 200 MiB file is ~2,600 chunks at these sizes).
    """

    min_size: int = 16 * KiB
    avg_size: int = 64 * KiB
    max_size: int = 256 * KiB

    def __post_init__(self) -> None:
        # pyfastcdc's own bounds; checked here so a bad config fails with our message, not Cython's.
        if not (64 <= self.min_size <= self.avg_size <= self.max_size):
            raise ValueError(f"chunk sizes must satisfy 64 <= min <= avg <= max, got {self}")
        if not (256 <= self.avg_size <= 4 * 1024 * KiB and 1024 <= self.max_size <= 16 * 1024 * KiB):
            raise ValueError(f"chunk sizes out of range (avg 256 B..4 MiB, max 1 KiB..16 MiB): {self}")

    def chunker(self) -> FastCDC:
        return FastCDC(self.avg_size, min_size=self.min_size, max_size=self.max_size)


DEFAULT_PARAMS: Final = ChunkParams()


def iter_chunks(stream: Readable, params: ChunkParams = DEFAULT_PARAMS) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(offset, data)`` for each chunk of ``stream``, in order, until end of stream.

    ``data`` is a view into a reused buffer: it is valid only until the next chunk is asked
    for, so hash or write it at once (copy it with ``bytes(data)`` to keep it).
    """
    for chunk in params.chunker().cut_stream(stream):
        yield chunk.offset, chunk.data


def iter_chunk_windows(
    stream: Readable, params: ChunkParams = DEFAULT_PARAMS, window: int = 32 * 1024 * KiB
) -> Iterator[list[tuple[int, memoryview]]]:
    """The chunks of ``stream`` (the cuts ``iter_chunks`` makes), a window of about ``window`` bytes at a time.

    Each list is ``(offset, data)`` for the chunks of one window, in order; the views are valid
    until the next list is asked for. A caller can then look a window's chunks up in one query
    instead of one per chunk. The last chunk of a window (cut where the window's bytes end, not
    where its content says) is cut again at the front of the next one: FastCDC's cuts depend on
    the bytes from a chunk's start only, so the cuts are those of one pass over the stream.
    """
    buffer = bytearray(max(window, 2 * params.max_size) + params.max_size)
    view = memoryview(buffer)
    chunker = params.chunker()
    base = filled = 0  # the stream offset of buffer[0], and the bytes in it
    eof = False
    while True:
        while filled < len(buffer) and not eof:
            n = stream.readinto(view[filled:])
            if n:
                filled += n
            else:
                eof = True
        if not filled:
            return
        chunks = [(chunk.offset, chunk.length) for chunk in chunker.cut_buf(view[:filled])]
        if not eof:
            chunks.pop()  # ends where the buffer does: cut again with what follows
        yield [(base + offset, view[offset : offset + length]) for offset, length in chunks]
        if eof:
            return
        consumed = chunks[-1][0] + chunks[-1][1]
        buffer[: filled - consumed] = buffer[consumed:filled]
        base += consumed
        filled -= consumed


def chunk_boundaries(stream: Readable, params: ChunkParams = DEFAULT_PARAMS) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, length)`` of each chunk of ``stream``; the lengths add up to the bytes read."""
    for chunk in params.chunker().cut_stream(stream):
        yield chunk.offset, chunk.length


def iter_buffer_chunks(data: bytes | bytearray | memoryview, params: ChunkParams = DEFAULT_PARAMS) -> Iterator[bytes]:
    """The chunks of bytes already in memory (the same cuts ``iter_chunks`` makes on a stream of them)."""
    for chunk in params.chunker().cut_buf(data):
        yield bytes(chunk.data)
