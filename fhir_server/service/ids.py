"""Ids the hub gives the resources it creates (POST, and transaction entries created by POST)."""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ["new_id"]

_lock = threading.Lock()
_last = 0


def new_id() -> str:
    """A version 7 UUID (RFC 9562): 48 bits of the time in milliseconds, then 74 random bits, made monotonic
    within the process (an id that would not sort after the last one is the last plus a random step of up to
    2^32: RFC 9562 section 6.2, method 2).

    Ids made one after another sort one after another, so the store's B-trees (resources by ``Type/id``, the
    search entries of one value by id) take a new key at their right edge instead of on a random page: with
    random (version 4) UUIDs every create dirtied pages all over them (docs/benchmarks.md, tenth session).
    The id shows when the resource was created, as its first ``meta.lastUpdated`` does."""
    global _last
    random = int.from_bytes(os.urandom(10))
    fresh = (time.time_ns() // 1_000_000) << 74 | random >> 6
    with _lock:
        _last = value = fresh if fresh > _last else _last + 1 + (random & 0xFFFFFFFF)
    millis, rand_a, rand_b = value >> 74, (value >> 62) & 0xFFF, value & ((1 << 62) - 1)
    return str(uuid.UUID(int=millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b))
