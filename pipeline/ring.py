"""Bounded shared-memory rings: fixed-size slots plus a queue of free slot indices.

A free slot is the credit that lets a producer go on (DataLoader's prefetch credits): when
the consumer is slow every slot is taken, ``acquire`` waits, and the producer pauses
instead of filling memory. Only slot indices and small metadata travel through queues;
the bulk data (bytes, PCM, windows) is written once into the slot and read in place.

The driver creates every ring (and so owns the segments: it alone unlinks them, exactly
once, see the shutdown protocol in ``pipeline/runtime/__init__.py``); stage processes receive the
ring as a ``Process`` argument and attach by name.
"""

from __future__ import annotations

import os
import queue
from multiprocessing import shared_memory

import numpy as np


class Stopped(Exception):
    """The pipeline is shutting down (stop event set, or our parent died)."""


class Ring:
    """``n_slots`` slots of ``slot_bytes`` bytes each in one shared-memory segment.

    Producer: ``slot = acquire(...)``; write into ``view(slot, ...)``; send the index on a
    queue. Consumer: read ``view(slot, ...)``; ``release(slot)`` when done with it.
    """

    def __init__(self, ctx, name: str, n_slots: int, slot_bytes: int):
        if n_slots < 1 or slot_bytes < 1:
            raise ValueError("a ring needs at least one slot of at least one byte")
        self.name = name
        self.n_slots = n_slots
        self.slot_bytes = slot_bytes
        self._shm = shared_memory.SharedMemory(name=name, create=True, size=n_slots * slot_bytes)
        self._owner_shm = self._shm  # kept after close() so unlink() can still run
        self._owner_pid = os.getpid()
        self._free = ctx.Queue(n_slots)
        for i in range(n_slots):
            self._free.put(i)

    # Pickling (only ever at Process start under spawn): the child attaches by name.
    def __getstate__(self):
        return {
            "name": self.name,
            "n_slots": self.n_slots,
            "slot_bytes": self.slot_bytes,
            "_free": self._free,
        }

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._owner_pid = None
        self._owner_shm = None
        self._shm = shared_memory.SharedMemory(name=self.name)

    def occupancy(self) -> int:
        """Slots in use right now (approximate: the free queue's size)."""
        try:
            return self.n_slots - self._free.qsize()
        except NotImplementedError:  # pragma: no cover - macOS
            return -1

    def acquire(self, alive, poll: float = 0.1) -> int:
        """Wait for a free slot. ``alive()`` is checked between polls; raises Stopped."""
        while True:
            try:
                return self._free.get(timeout=poll)
            except queue.Empty:
                if not alive():
                    raise Stopped()

    def release(self, slot: int) -> None:
        # Never blocks: there are exactly n_slots credits and the queue holds n_slots.
        self._free.put_nowait(slot)

    def view(self, slot: int, dtype, count: int) -> np.ndarray:
        """``count`` items of ``dtype`` at the start of ``slot`` (no copy)."""
        dtype = np.dtype(dtype)
        if count * dtype.itemsize > self.slot_bytes:
            raise ValueError(f"{count} x {dtype} does not fit a {self.slot_bytes}-byte slot")
        return np.ndarray((count,), dtype=dtype, buffer=self._shm.buf, offset=slot * self.slot_bytes)

    def close(self) -> None:
        """Detach this process's mapping (every process, owner included)."""
        shm, self._shm = self._shm, None
        if shm is not None:
            try:
                shm.close()
            except BufferError:
                # A numpy view still points into the mapping; the OS unmaps at exit.
                pass

    def unlink(self) -> None:
        """Remove the segment's name (owner only, once). Safe if already gone."""
        if self._owner_pid != os.getpid():
            return
        self._owner_pid = None
        try:
            self._owner_shm.unlink()  # also unregisters it from the resource tracker
        except FileNotFoundError:
            pass


def wait_put(q, item, alive, poll: float = 0.1) -> None:
    """``q.put`` that never blocks forever: checks ``alive()`` between timeouts."""
    while True:
        try:
            q.put(item, timeout=poll)
            return
        except queue.Full:
            if not alive():
                raise Stopped()


def wait_get(q, alive, poll: float = 0.1):
    """``q.get`` that never blocks forever: checks ``alive()`` between timeouts."""
    while True:
        try:
            return q.get(timeout=poll)
        except queue.Empty:
            if not alive():
                raise Stopped()
