"""Wake-ups through Redis Streams: partitioned streams, one consumer group per worker pool.

The database is the record; Redis only says "there is work". Whatever Redis loses (a restart
without persistence, a failover to a replica that lagged, an entry cut by the ``maxlen`` cap)
costs a delay, never an event: the outbox relay publishes again what was never published, and
the worker's periodic sweep finds events whose wake-up was lost. Delivery is at least once; the
ledger makes the effects exactly once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeAlias

import redis
from ledgerflow.transports import Delivery, Wakeup
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from ledgerflow_redis.errors import RedisTransportError, RedisUnavailableError
from ledgerflow_redis.messages import decode, decode_fields, encode
from ledgerflow_redis.settings import RedisSettings, display_url

if TYPE_CHECKING:
    from ledgerflow.engine import Engine

__all__ = ["ID_SEPARATOR", "RedisTransport"]

log = logging.getLogger("ledgerflow_redis")

ID_SEPARATOR = "|"
"""Between the stream and the entry id in :attr:`Delivery.id`:
``ledgerflow:wakeups:2|1700000000000-0``."""

_ReadReply: TypeAlias = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]] | None
"""What ``XREADGROUP`` gives in RESP2: ``[(stream, [(entry id, fields or None), …]), …]``;
``None`` (or ``[]``) when a blocking read timed out."""

_RELEASED_IDLE_MS = 365 * 24 * 3600 * 1000
"""The idle time :meth:`RedisTransport.close` gives the messages it held back, so that any
other consumer's next claim takes them."""

# Atomic, so that no group can be created nor any entry delivered between reading the groups'
# positions and trimming. For each stream in KEYS, the oldest entry a group still needs is its
# oldest pending entry or, with none pending, the entry after its last-delivered-id; everything
# older than the oldest of those over all groups is removed (XTRIM MINID keeps ids >= MINID).
# A stream without a group is left alone: a group created later at id 0 will read it. Ids are
# compared as decimal strings (Redis writes them without leading zeros), so no precision is lost.
_TRIM_SCRIPT = """
local function older(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if #ams ~= #bms then return #ams < #bms end
  if ams ~= bms then return ams < bms end
  if #aseq ~= #bseq then return #aseq < #bseq end
  return aseq < bseq
end
local function after(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  local n = tonumber(seq)
  if n >= 9007199254740991 then return id end
  return ms .. '-' .. string.format('%d', n + 1)
end
local removed = {}
for i, key in ipairs(KEYS) do
  removed[i] = 0
  if redis.call('EXISTS', key) == 1 then
    local keep = nil
    for _, flat in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local group = {}
      for j = 1, #flat, 2 do group[flat[j]] = flat[j + 1] end
      local need
      if group['pending'] > 0 then
        need = redis.call('XPENDING', key, group['name'])[2]
      else
        need = after(group['last-delivered-id'])
      end
      if keep == nil or older(need, keep) then keep = need end
    end
    if keep ~= nil then removed[i] = redis.call('XTRIM', key, 'MINID', keep) end
  end
end
return removed
"""


class RedisTransport:
    """A :class:`~ledgerflow.transports.BrokerTransport` over Redis Streams, configured by
    its URL (see :class:`~ledgerflow_redis.RedisSettings`).

    Wake-ups of execution ``x`` go to stream ``{prefix}:wakeups:{crc32(x) % streams}``: one
    execution's wake-ups stay in one stream, in the order they were published, while the
    streams spread the load. Every worker of a pool reads every stream through the pool's
    consumer group. ``engine`` is not needed and may be ``None``; it is kept for the worker's
    sake. The transport is safe to share between threads; no connection is made until the
    first command.
    """

    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.settings = RedisSettings.from_url(url)
        self.engine = engine
        self.url = display_url(url)
        """The broker URL, its password hidden."""
        self.max_deliveries = self.settings.max_deliveries
        prefix = self.settings.prefix
        self.streams: tuple[str, ...] = tuple(
            f"{prefix}:wakeups:{n}" for n in range(self.settings.streams)
        )
        """Every stream wake-ups are published to, partition 0 first."""
        self.dead_letter_stream = f"{prefix}:dead-letters"
        """The stream :meth:`dead_letter` adds to."""
        self.redis: redis.Redis = redis.Redis.from_url(
            self.settings.connection_url,
            socket_timeout=self.settings.socket_timeout,
            socket_connect_timeout=self.settings.socket_connect_timeout,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), self.settings.retries),
            protocol=2,
        )
        """The client; every command of the transport goes through it."""
        self.group_resets = 0
        """How many times Redis had lost the consumer group (``NOGROUP``: restarted without
        persistence, or a failover) and the transport created it again. Each time, the
        wake-ups Redis held are gone: a worker may sweep for their events at once rather than
        wait for its periodic sweep."""
        self._trim = self.redis.register_script(_TRIM_SCRIPT)
        self._lock = threading.Lock()
        self._claiming = threading.Lock()
        self._groups_ready = False
        self._cursors = dict.fromkeys(self.streams, "0-0")
        self._next_claim = 0.0
        self._claim_from = 0
        self._held: dict[str, list[Delivery]] = {}

    def __repr__(self) -> str:
        return f"RedisTransport({self.url!r}, group={self.settings.group!r})"

    # ----------------------------------------------------------------------------------------
    # Publishing
    # ----------------------------------------------------------------------------------------

    def stream_for(self, execution_id: str) -> str:
        """The stream execution ``execution_id``'s wake-ups go to: a CRC-32 of the id, the
        same in every process and every Python version (unlike ``hash()``)."""
        return self.streams[zlib.crc32(execution_id.encode()) % len(self.streams)]

    def publish(self, wakeups: Sequence[Wakeup]) -> None:
        """Add each wake-up to its execution's stream, in one round trip, capped at ``maxlen``
        entries (approximately). Raises :class:`RedisUnavailableError` if Redis cannot be
        reached: the outbox relay publishes them later."""
        if not wakeups:
            return
        cap = self.settings.maxlen or None
        with self._talking(f"publishing {_count(len(wakeups), 'wake-up')}"):
            pipe = self.redis.pipeline(transaction=False)
            for wakeup in wakeups:
                pipe.xadd(
                    self.stream_for(wakeup.execution_id),
                    encode(wakeup),  # type: ignore[arg-type]  # dict is invariant
                    maxlen=cap,
                    approximate=True,
                )
            pipe.execute()

    def listen(self, wake: Callable[[], None], stopping: threading.Event) -> None:
        """Nothing to listen to: :meth:`receive` blocks until work arrives."""

    def ping(self) -> None:
        """Raise :class:`RedisUnavailableError` unless Redis answers (``ledgerflow health``)."""
        with self._talking("checking that Redis answers"):
            self.redis.ping()

    # ----------------------------------------------------------------------------------------
    # Consuming
    # ----------------------------------------------------------------------------------------

    def receive(self, consumer: str, *, count: int, block: float) -> list[Delivery]:
        """Up to ``count`` messages for ``consumer``, waiting up to ``block`` seconds (at most
        :attr:`RedisSettings.max_block`) for the first.

        First, every ``claim_every`` seconds, messages other consumers of the group left
        unacknowledged for ``claim_idle`` seconds are claimed (``XAUTOCLAIM``); then new ones
        are read from every stream (``XREADGROUP >``). A message's ``deliveries`` is Redis's
        delivery count for it. When several streams have work, a read may bring a few more
        than ``count``: those are held back, and the next call for the same consumer returns
        them at once. The group is created on first use, and again if Redis lost it.
        """
        if not consumer or not isinstance(consumer, str):
            raise ValueError("consumer must be a non-empty string (the worker's id)")
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count!r}")
        if block < 0:
            raise ValueError(f"block must be 0 or more seconds, not {block!r}")
        with self._lock:
            held = self._held.pop(consumer, [])
            if held:  # at once, without waiting for more
                self._held[consumer] = held[count:]
                return held[:count]
        with self._talking("receiving"):
            self._ensure_groups()
            try:
                return self._receive(consumer, count, block)
            except redis.ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                log.warning(
                    "Redis at %s lost consumer group %s (restarted without persistence?): "
                    "creating it again; the wake-ups it held are lost and the worker's sweep "
                    "finds their events",
                    self.url,
                    self.settings.group,
                )
                self.group_resets += 1
                self._groups_ready = False
                self._ensure_groups()
                return self._receive(consumer, count, block)

    def _receive(self, consumer: str, count: int, block: float) -> list[Delivery]:
        got = self._claim(consumer, count)
        wanted = count - len(got)
        if wanted == 0:
            return got
        # COUNT applies to each stream: ask each for its share, so a read brings at most
        # len(streams) - 1 more than wanted, and keep those for the next call
        share = -(-wanted // len(self.streams))
        waiting = None if (got or block == 0) else min(block, self.settings.max_block)
        reply: _ReadReply = self.redis.xreadgroup(  # type: ignore[assignment]
            self.settings.group,
            consumer,
            dict.fromkeys(self.streams, ">"),
            count=share,
            block=None if waiting is None else max(1, round(waiting * 1000)),
        )
        fresh = [
            self._delivery(stream.decode(), entry_id.decode(), fields, 1)
            for stream, entries in reply or ()
            for entry_id, fields in entries
            if fields is not None
        ]
        if len(fresh) > wanted:
            with self._lock:
                self._held[consumer] = [*self._held.get(consumer, []), *fresh[wanted:]]
        return got + fresh[:wanted]

    def _claim(self, consumer: str, count: int) -> list[Delivery]:
        """Take over messages idle for ``claim_idle`` seconds, if a look is due, from each
        stream in turn (starting one stream further at each look, so that one stream full of
        a dead worker's messages does not keep the others waiting), resuming each stream's
        scan where the last look stopped."""
        if time.monotonic() < self._next_claim or not self._claiming.acquire(blocking=False):
            return []
        try:
            claimed: list[tuple[str, bytes, dict[bytes, bytes]]] = []
            idle_ms = max(1, round(self.settings.claim_idle * 1000))
            first = self._claim_from
            self._claim_from = (first + 1) % len(self.streams)
            looked = 0
            for stream in self.streams[first:] + self.streams[:first]:
                if len(claimed) == count:
                    break
                looked += 1
                cursor, entries, *rest = self.redis.xautoclaim(
                    stream,
                    self.settings.group,
                    consumer,
                    idle_ms,
                    start_id=self._cursors[stream],
                    count=count - len(claimed),
                )
                self._cursors[stream] = cursor.decode()
                # Redis 7 gives a third part: pending ids whose entries are gone from the
                # stream, which it removed from the pending list (6.2 gave them as nil entries)
                gone = len(rest[0]) if rest else 0
                gone += sum(1 for _, fields in entries if fields is None)
                if gone:
                    log.warning(
                        "%s: %s pending in group %s had been deleted from the stream "
                        "(trimmed by the maxlen cap?); the worker's sweep finds their events",
                        stream,
                        _count(gone, "wake-up"),
                        self.settings.group,
                    )
                claimed += [(stream, i, f) for i, f in entries if f is not None]
            if looked == len(self.streams) and all(c == "0-0" for c in self._cursors.values()):
                # every stream was scanned to its end: the next look is due in claim_every
                # seconds; until then, each receive goes on where this look stopped
                self._next_claim = time.monotonic() + self.settings.claim_every
            if not claimed:
                return []
            # XAUTOCLAIM counted the delivery; XPENDING says how many there were (an entry
            # acknowledged meanwhile has no row: it was delivered twice at least)
            pipe = self.redis.pipeline(transaction=False)
            for stream, entry_id, _ in claimed:
                pipe.xpending_range(stream, self.settings.group, entry_id, entry_id, 1)
            counts = [rows[0]["times_delivered"] if rows else 2 for rows in pipe.execute()]
            return [
                self._delivery(stream, entry_id.decode(), fields, deliveries)
                for (stream, entry_id, fields), deliveries in zip(claimed, counts, strict=True)
            ]
        finally:
            self._claiming.release()

    def _delivery(
        self, stream: str, entry_id: str, raw: dict[bytes, bytes], deliveries: int
    ) -> Delivery:
        fields, problem = decode_fields(raw)
        parsed = decode(fields) if problem is None else problem
        return Delivery(
            id=f"{stream}{ID_SEPARATOR}{entry_id}",
            wakeup=parsed if isinstance(parsed, Wakeup) else None,
            deliveries=deliveries,
            problem=None if isinstance(parsed, Wakeup) else parsed,
            body=fields,
        )

    def _ensure_groups(self) -> None:
        """Create the group on every stream (and the stream with it), reading from the start
        (id 0, not ``$``: wake-ups published before any worker existed are work too)."""
        if self._groups_ready:
            return
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xgroup_create(stream, self.settings.group, id="0", mkstream=True)
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, Exception) and not str(result).startswith("BUSYGROUP"):
                raise result
        self._groups_ready = True

    # ----------------------------------------------------------------------------------------
    # Acknowledging
    # ----------------------------------------------------------------------------------------

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge ``deliveries`` (``XACK``, one per stream, in one round trip); one
        already acknowledged, or lost by Redis, is no error."""
        by_stream: dict[str, list[str]] = {}
        for delivery in deliveries:
            stream, entry_id = self._split(delivery.id)
            by_stream.setdefault(stream, []).append(entry_id)
        if not by_stream:
            return
        with self._talking(f"acknowledging {_count(len(deliveries), 'message')}"):
            pipe = self.redis.pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.xack(stream, self.settings.group, *ids)
            pipe.execute()

    def dead_letter(self, delivery: Delivery, reason: str) -> str:
        """Add ``delivery`` to the dead-letter stream and acknowledge it, both or neither
        (``MULTI``); returns the dead letter's entry id.

        The dead letter's fields: ``v`` (1), ``original_id`` (the delivery's id), ``reason``,
        ``problem`` (why it did not parse; empty if it did), ``deliveries`` and ``body`` (the
        original fields as a JSON object).
        """
        stream, entry_id = self._split(delivery.id)
        letter = {
            "v": "1",
            "original_id": delivery.id,
            "reason": reason,
            "problem": delivery.problem or "",
            "deliveries": str(delivery.deliveries),
            "body": json.dumps(delivery.body, sort_keys=True, ensure_ascii=False),
        }
        with self._talking(f"moving {delivery.id} to the dead letters"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.xadd(
                self.dead_letter_stream,
                letter,  # type: ignore[arg-type]  # dict is invariant
                maxlen=self.settings.maxlen or None,
                approximate=True,
            )
            pipe.xack(stream, self.settings.group, entry_id)
            letter_id, _ = pipe.execute()
        return str(letter_id.decode())

    def _split(self, delivery_id: str) -> tuple[str, str]:
        stream, _, entry_id = delivery_id.rpartition(ID_SEPARATOR)
        if stream not in self.streams or not entry_id:
            raise ValueError(
                f"{delivery_id!r} is not the id of a delivery of this transport "
                f"(expected '<one of {self.streams[0]}…>{ID_SEPARATOR}<entry id>')"
            )
        return stream, entry_id

    # ----------------------------------------------------------------------------------------
    # Upkeep
    # ----------------------------------------------------------------------------------------

    def trim(self) -> dict[str, int]:
        """Remove from each stream the entries no consumer group needs any more; returns how
        many were removed, by stream.

        A group needs its oldest pending entry (received, not acknowledged) and everything
        after it or, with none pending, everything after its last-delivered entry. Each
        stream is trimmed (``XTRIM MINID``) to the oldest entry any group needs, in one
        script, so nothing a group has not acknowledged is ever removed. A stream without a
        group is left whole. Meant to be called now and then (the worker's relay thread
        does).
        """
        with self._talking("trimming the streams"):
            removed = self._trim(keys=list(self.streams))
        return dict(zip(self.streams, (int(n) for n in removed), strict=True))

    def close(self) -> None:
        """Let other consumers take at once the messages held back for the next receive
        (marked long idle, so the next claim takes them), then release the connections."""
        with self._lock:
            held, self._held = self._held, {}
        try:
            if any(held.values()):
                pipe = self.redis.pipeline(transaction=False)
                for consumer, deliveries in held.items():
                    for delivery in deliveries:
                        stream, entry_id = self._split(delivery.id)
                        pipe.xclaim(
                            stream,
                            self.settings.group,
                            consumer,
                            0,
                            [entry_id],
                            idle=_RELEASED_IDLE_MS,
                            justid=True,  # JUSTID leaves the delivery count alone
                        )
                pipe.execute()
        except redis.RedisError as exc:
            log.warning(
                "could not release the messages held back for the next receive (%s); other "
                "consumers claim them after claim_idle",
                exc,
            )
        finally:
            self.redis.close()

    # ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _talking(self, doing: str) -> Iterator[None]:
        """Turn redis-py's errors into ours, saying what was being done and to which Redis."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise RedisUnavailableError(
                f"Redis at {self.url} cannot be reached ({doing}): {exc}"
            ) from exc
        except redis.RedisError as exc:
            raise RedisTransportError(f"Redis at {self.url} refused {doing}: {exc}") from exc


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
