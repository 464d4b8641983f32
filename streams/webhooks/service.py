"""`trunkline webhooks`: the lifecycle webhook delivery service (I/O around the book).

    config.webhook-subscriptions --follow--> subscriptions (secrets from this environment)
    webhook-state (compacted) --read at start--> the book: every pending delivery again
    call-events, billing, webhook-commands --group consumer--> book.on_record / on_command
        -> state records (webhook-state), flushed, then the offsets committed
    per subscription: a task hands due deliveries to slots (at most
        TRUNKLINE_WEBHOOK_CONCURRENCY in flight); a slot POSTs one (aiohttp, the
        subscription's own keep-alive pool), hands the result to the book -> state records
        and a WebhookAttempt (webhook-deliveries), and takes the next due one itself
    every record the book asks for waits in an outbox until the end of the loop's
        iteration, then goes to the producer in batches (one per state partition, one of
        attempts); a commit empties the outbox before its flush

Per delivery the CPU goes to aiohttp (about half), Avro (the event's decoding, the
attempt's encoding), the book and four records; a batch of records costs librdkafka one
queue lock instead of one per record (docs/benchmarks.md has the figures).

Nothing is lost:
- an event's offset is committed only after the deliveries it created were acknowledged
  by the broker in `webhook-state`; a service killed before that reads the event again
  (the book ignores what it already owes: one delivery per subscription and event id);
- every attempt's outcome (and so the next attempt time) is written to `webhook-state`;
  a delivery in flight when the service dies is sent again after the restart (the same
  webhook-id: receivers dedupe).

Isolation: each subscription has its own task, connection pool and in-flight limit, so a
slow or dead subscriber only ever waits for itself. Safety: targets are checked after DNS
resolution (`streams/webhooks/targets.py`, through the resolver the pool uses), redirects
are not followed, answers are read to at most 1 KiB, and each attempt times out after
TRUNKLINE_WEBHOOK_TIMEOUT_MS. `GET /metrics` (its web port) counts attempts by outcome,
times them, shows what each subscription owes and the consumer group's lag. Deliveries
reach ClickHouse through the sink, which follows
`webhook-deliveries` (chDB allows one process per data path, and the sink owns it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import orjson
import yarl
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from confluent_kafka import KafkaError, TopicPartition
from prometheus_client import Counter, Histogram

from schemas.codec import Codec, CodecError, make_codec
from streams.webhooks import signing, targets
from streams.webhooks.book import SETTLED, Book, Changes, Delivery, Result
from streams.webhooks.retry import retry_after_ms
from trunkline.core import kafka, logs, metrics
from trunkline.core.config import SecretError, describe_ref, resolve_secret
from trunkline.core.settings import Settings
from trunkline.core.topics import (
    BILLING,
    CALL_EVENTS,
    WEBHOOK_COMMANDS,
    WEBHOOK_DELIVERIES,
    WEBHOOK_STATE,
    WEBHOOK_SUBSCRIPTIONS,
)

log = logging.getLogger("trunkline.webhooks")
MAX_ANSWER_BYTES = 1024
SWEEP_EVERY_S = 10.0
YIELD_EVERY = 50  # records of a fetched batch handled before the loop's other tasks run
USER_AGENT = "trunkline-webhooks/0.1"

#: the webhook service's /metrics (docs/metrics.md); what it owes is read at scrape time
ATTEMPTS = Counter(
    "trunkline_webhook_deliveries_total",
    "Delivery attempts by subscription, event type and outcome (delivered; retrying: "
    "failed, another attempt is scheduled; dead: the last attempt failed; gone: 410 "
    "disabled the subscription)",
    ["subscription", "event_type", "outcome"],
)
ATTEMPT_SECONDS = Histogram(
    "trunkline_webhook_attempt_seconds",
    "One delivery attempt's time, request to answer (or failure), by subscription",
    ["subscription"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def now_ms() -> int:
    return int(time.time() * 1000)


class RefusedTarget(OSError):
    """Raised inside aiohttp's connector: every address of the host was refused."""


class FilteringResolver(AbstractResolver):
    """aiohttp's resolver, keeping only the addresses a subscription may reach: the
    connection goes to an address that was checked (no check-then-resolve gap)."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        try:
            kept = set(
                targets.allowed_addresses(host, [r["host"] for r in found], self._allow_private)
            )
        except targets.TargetRefused as exc:
            raise RefusedTarget(str(exc)) from None
        return [r for r in found if r["host"] in kept]

    async def close(self) -> None:
        await self._inner.close()


class Target:
    """One subscription's sending side: its key, pool and in-flight deliveries.

    The session keeps its connections alive (at most `limit`, one per request in flight)
    and stores no cookies: a subscriber's cookies are never sent back."""

    def __init__(self, sub_id: str, key: bytes | None, allow_private: bool, limit: int) -> None:
        self.sub_id = sub_id
        self.key = key
        self.allow_private = allow_private
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                resolver=FilteringResolver(allow_private), limit=limit, ttl_dns_cache=10
            ),
            headers={"user-agent": USER_AGENT},
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._urls: dict[str, yarl.URL] = {}
        self.inflight: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def checked_url(self, url: str) -> yarl.URL:
        """`url` parsed, once its scheme and host (a literal IP's address too) were checked;
        TargetRefused otherwise. A name is checked after resolution, by the pool's
        resolver. Remembered per URL: the target is made again when its config changes."""
        checked = self._urls.get(url)
        if checked is None:
            host, _ = targets.check_url(url)
            literal = _literal_ip(host)
            if literal is not None:
                targets.allowed_addresses(host, [literal], self.allow_private)
            if len(self._urls) > 16:
                self._urls.clear()
            checked = self._urls[url] = yarl.URL(url)
        return checked

    async def close(self, cancel_inflight: bool = False) -> None:
        """Stop taking deliveries. Requests in flight are left to fail as the pool closes
        (their deliveries are retried like any failure), unless the whole service stops
        (`cancel_inflight`: their state on disk is still PENDING)."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if cancel_inflight:
            for t in list(self.inflight):
                t.cancel()
        await self.session.close()


class WebhookService:
    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        self.settings = settings
        self.codec = codec or make_codec(settings.schema_registry_url)
        prefix = settings.topic_prefix
        self.topics = {
            "events": CALL_EVENTS.name(prefix),
            "billing": BILLING.name(prefix),
            "commands": WEBHOOK_COMMANDS.name(prefix),
            "state": WEBHOOK_STATE.name(prefix),
            "deliveries": WEBHOOK_DELIVERIES.name(prefix),
            "subscriptions": WEBHOOK_SUBSCRIPTIONS.name(prefix),
        }
        self.book = Book(settings.retry_schedule_ms, settings.state_retention_ms)
        self.timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_ms / 1000)
        self.targets: dict[str, Target] = {}
        self.out = kafka.Producers(
            settings.kafka_bootstrap,
            ("decision",),
            name="webhooks",
            overrides={"decision": {"linger.ms": 5, "compression.type": "lz4"}},
        )
        # records not handed to the producer yet: state by partition, attempts
        self._outbox: dict[int, list[tuple[bytes, bytes | None]]] = {}
        self._outbox_attempts: list[tuple[bytes, bytes | None]] = []
        self._outbox_due = False
        self._counters: dict[tuple[str, str, str], Any] = {}  # label children, looked up once
        self._timers: dict[str, Any] = {}
        self.stats = {"delivered": 0, "failed_attempts": 0, "dead": 0, "gone": 0, "events": 0}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="webhooks-consumer")
        self._gates: dict[str, tuple[int, int]] = {}  # call id -> (partition, offset needed)
        self._position: dict[int, int] = {}  # call-events partition -> next offset read
        self._partitions: dict[str, int] = {}
        self._closing: set[asyncio.Future[None]] = set()
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Any = None
        self._follower: kafka.CompactedFollower | None = None
        self.ready = False

    # -- subscriptions -------------------------------------------------------------------
    def _key_for(self, record: dict[str, Any]) -> bytes:
        """The HMAC key of a subscription record; SecretError naming what is missing."""
        ref = str(record["secret_ref"])
        try:
            return signing.secret_key(resolve_secret(ref))
        except signing.SecretFormatError as exc:
            raise SecretError(f"{describe_ref(ref)}: {exc}") from None

    def _subscription_changed(self, sub_id: str, value: bytes | None) -> None:
        record = None
        if value is not None:
            try:
                _, record = self.codec.decode(value)
            except CodecError as exc:
                log.error("subscription %s: undecodable config record: %s", sub_id, exc)
                return
        old = self.targets.pop(sub_id, None)
        if old is not None:
            self._closing.add(asyncio.ensure_future(old.close()))
        if record is not None:
            try:
                key: bytes | None = self._key_for(record)
            except SecretError as exc:
                if not self.ready:
                    raise
                log.error("subscription %s cannot sign (held until a restart): %s", sub_id, exc)
                key = None
            target = Target(
                sub_id,
                key,
                bool(record.get("allow_private_targets")),
                self.settings.webhook_concurrency,
            )
            self.targets[sub_id] = target
            if self.ready:
                target.task = asyncio.ensure_future(self._run_target(target))
        self._apply(self.book.set_subscription(sub_id, record))

    # -- applying the book's changes ------------------------------------------------------
    def _partition(self, key: str) -> int:
        """The state partition of a call (or subscription) id, remembered a while."""
        partition = self._partitions.get(key)
        if partition is None:
            if len(self._partitions) > 100_000:
                self._partitions.clear()
            partition = self._partitions[key] = kafka.partition_for(
                key.encode(), WEBHOOK_STATE.partitions
            )
        return partition

    def _apply(self, changes: Changes) -> None:
        """Carry out a step of the book: its records go to the outbox (produced at the end
        of this loop iteration, and always before a commit), wake the subscriptions."""
        if not self._outbox_due and (changes.writes or changes.attempts):
            self._outbox_due = True
            asyncio.get_running_loop().call_soon(self._produce_outbox)
        for w in changes.writes:
            self._outbox.setdefault(self._partition(w.partition_key), []).append(
                (w.key.encode(), None if w.value is None else orjson.dumps(w.value))
            )
        for a in changes.attempts:
            self._outbox_attempts.append(
                (a["envelope"]["call_id"].encode(), self.codec.encode("WebhookAttempt", a))
            )
            outcome = a["outcome"]
            sub_id = a["subscription_id"]
            counter = self._counters.get((sub_id, a["event_type"], outcome))
            if counter is None:
                if len(self._counters) > 10_000:
                    self._counters.clear()
                counter = ATTEMPTS.labels(sub_id, a["event_type"], outcome)
                self._counters[(sub_id, a["event_type"], outcome)] = counter
            counter.inc()
            timer = self._timers.get(sub_id)
            if timer is None:
                timer = self._timers[sub_id] = ATTEMPT_SECONDS.labels(sub_id)
            timer.observe((a["latency_ms"] or 0) / 1000)
            if outcome == "delivered":
                self.stats["delivered"] += 1
            elif outcome in ("dead", "gone"):
                self.stats[outcome] += 1
            if outcome in ("retrying", "dead", "gone"):
                self.stats["failed_attempts"] += 1
            level = logging.DEBUG if outcome == "delivered" else logging.INFO
            if not log.isEnabledFor(level):
                continue
            log.log(
                level,
                "%s %s -> %s: attempt %d %s (%s)",
                a["event_type"],
                a["webhook_id"],
                a["subscription_id"],
                a["attempt"],
                outcome,
                a["status_code"] if a["status_code"] is not None else a["error"],
                extra=logs.call(a["envelope"]["call_id"] or None),
            )
        limit = self.settings.webhook_concurrency
        for sub_id in changes.woken:
            target = self.targets.get(sub_id)
            # every slot busy: each takes the next due delivery itself when it is done
            if target is not None and len(target.inflight) < limit:
                target.wake.set()

    def _produce_outbox(self) -> None:
        """Hand the outbox to the producer: one batch per state partition (a key's records
        keep their order) and one of attempts (partitioned by call id)."""
        self._outbox_due = False
        outbox, self._outbox = self._outbox, {}
        for partition, records in outbox.items():
            self.out.produce_batch(self.topics["state"], records, partition=partition)
        if self._outbox_attempts:
            attempts, self._outbox_attempts = self._outbox_attempts, []
            self.out.produce_batch(self.topics["deliveries"], attempts)

    # -- sending -------------------------------------------------------------------------
    async def _run_target(self, target: Target) -> None:
        limit = self.settings.webhook_concurrency
        while not self._stop.is_set():
            target.wake.clear()
            now = now_ms()
            room = limit - len(target.inflight)
            if room > 0 and target.key is not None:
                due, changes = self.book.due(target.sub_id, now, room)
                self._apply(changes)
                for d in due:
                    task = asyncio.ensure_future(self._sender(target, d))
                    target.inflight.add(task)
                    task.add_done_callback(target.inflight.discard)
            next_at = self.book.next_due(target.sub_id)
            full = len(target.inflight) >= limit or target.key is None
            timeout = None if next_at is None or full else max(0.0, (next_at - now_ms()) / 1000)
            if timeout == 0.0:
                await asyncio.sleep(0)  # due already: yield, then take it
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(target.wake.wait(), timeout)

    async def _sender(self, target: Target, d: Delivery) -> None:
        """One of the target's in-flight slots: sends `d`, then the next delivery due
        there, in this task (no task per delivery), until none is due."""
        while True:
            await self._send(target, d)
            if (
                self._stop.is_set()
                or target.key is None
                or self.targets.get(target.sub_id) is not target
            ):
                break  # stopping, or the subscription changed: its new target takes over
            due, changes = self.book.due(target.sub_id, now_ms(), 1)
            self._apply(changes)
            if not due:
                break
            d = due[0]
        task = asyncio.current_task()
        if task is not None:
            target.inflight.discard(task)  # free before the wake: the slot is seen free
        target.wake.set()

    async def _send(self, target: Target, d: Delivery) -> None:
        sub = self.book.subscriptions.get(d.subscription_id)
        started = time.perf_counter()
        result: Result
        try:
            if sub is None or target.key is None:
                raise targets.TargetRefused("subscription removed")
            url = target.checked_url(sub.url)
            body = d.body.encode()
            headers = signing.headers(target.key, d.webhook_id, int(time.time()), body)
            async with target.session.post(
                url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as resp:
                await resp.content.read(MAX_ANSWER_BYTES)
                status = resp.status
                if 200 <= status < 300:
                    result = Result(status, "", _elapsed_ms(started))
                else:
                    result = Result(
                        status,
                        f"HTTP {status} {resp.reason or ''}".strip(),
                        _elapsed_ms(started),
                        retry_after_ms(resp.headers.get("Retry-After"), now_ms()),
                    )
        except targets.TargetRefused as exc:
            result = Result(None, f"target refused: {exc}", _elapsed_ms(started))
        except TimeoutError:
            result = Result(None, f"timeout after {self.timeout.total:.0f} s", _elapsed_ms(started))
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error if isinstance(exc.os_error, RefusedTarget) else exc.__cause__
            if isinstance(cause, RefusedTarget):
                result = Result(None, f"target refused: {cause}", _elapsed_ms(started))
            else:
                result = Result(None, f"{type(exc).__name__}: {exc}"[:300], _elapsed_ms(started))
        except (aiohttp.ClientError, OSError) as exc:
            result = Result(None, f"{type(exc).__name__}: {exc}"[:300], _elapsed_ms(started))
        if d.key in self.book.deliveries:
            self._apply(self.book.on_result(d.key, result, now_ms()))

    # -- consuming -----------------------------------------------------------------------
    def _consume(self) -> list[Any]:
        msgs: list[Any] = self._consumer.consume(num_messages=1000, timeout=0.1)
        return msgs

    def _watermark(self, partition: int) -> int:
        tp = TopicPartition(self.topics["events"], partition)
        _, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
        return int(high)

    def _read_position(self, partition: int) -> int:
        """How far this service has read call-events partition `partition` (its
        committed offset before it read anything there in this run)."""
        if partition in self._position:
            return self._position[partition]
        tp = TopicPartition(self.topics["events"], partition)
        committed = self._consumer.committed([tp], timeout=10)[0].offset
        return max(0, int(committed))

    def _commit(self, offsets: list[TopicPartition]) -> None:
        self.out.flush(60)  # the state records the events created, acknowledged first
        kafka.commit(self._consumer, offsets)

    async def _run_consumer(self) -> None:
        loop = asyncio.get_running_loop()
        run: Callable[..., Any] = lambda fn, *a: loop.run_in_executor(self._pool, fn, *a)  # noqa: E731
        events_partitions = CALL_EVENTS.partitions
        same_partitions = WEBHOOK_STATE.partitions == events_partitions
        for call_id in self.book.gated():
            partition = kafka.partition_for(call_id.encode(), events_partitions)
            self._gates[call_id] = (partition, await run(self._watermark, partition))
        while not self._stop.is_set():
            msgs = await run(self._consume)
            offsets: dict[tuple[str, int], int] = {}
            marks: dict[int, int] = {}
            for i, msg in enumerate(msgs):
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)  # let answers in and slots refill between records
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer: %s", err)
                    continue
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                offsets[(topic, partition)] = offset + 1
                try:
                    name, record = self.codec.decode(msg.value() or b"")
                except CodecError as exc:
                    log.error("%s[%s]@%s: undecodable, skipped: %s", topic, partition, offset, exc)
                    continue
                now = now_ms()
                if topic == self.topics["commands"]:
                    self._apply(self.book.on_command(record, now))
                    continue
                if topic == self.topics["events"]:
                    self._position[partition] = offset + 1
                    if same_partitions and msg.key() is not None:
                        # keyed by call id with murmur2: the call's state partition too
                        self._partitions.setdefault(msg.key().decode(errors="replace"), partition)
                    self._apply(self.book.on_record(name, record, now))
                    continue
                call_id = str(record["envelope"]["call_id"])
                q = kafka.partition_for(call_id.encode(), events_partitions)
                if q not in marks:
                    marks[q] = await run(self._watermark, q)
                self._gates[call_id] = (q, marks[q])
                self._apply(self.book.on_record(name, record, now, gated=True))
            if self._gates:
                read = {q: await run(self._read_position, q) for q, _ in self._gates.values()}
                for call_id, (q, needed) in list(self._gates.items()):
                    if read[q] >= needed:
                        del self._gates[call_id]
                        self._apply(self.book.ungate(call_id))
            if offsets:
                self.stats["events"] += len(msgs)
                parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                self._produce_outbox()  # what these events created, queued before the flush
                await run(self._commit, parts)

    async def _sweep(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SWEEP_EVERY_S)
            self._apply(Changes(writes=self.book.sweep(now_ms())))

    # -- start and stop ------------------------------------------------------------------
    def _load_state(self) -> None:
        for key, value in kafka.read_compacted(
            self.settings.kafka_bootstrap, self.topics["state"], timeout=30
        ).items():
            self.book.load(key.decode(), None if value is None else orjson.loads(value))
        self.book.loaded()
        self.book.gate_loaded_ratings()

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        bootstrap = self.settings.kafka_bootstrap
        self._follower = kafka.CompactedFollower(
            bootstrap,
            f"{self.settings.app_id}-webhooks-config",
            self.topics["subscriptions"],
            lambda key, value: loop.call_soon_threadsafe(self._on_config, key, value),
        )
        self._follower.start()
        caught_up = await loop.run_in_executor(None, self._follower.caught_up.wait, 30)
        if not caught_up:
            raise RuntimeError(f"could not read {self.topics['subscriptions']} within 30 s")
        await asyncio.sleep(0)  # the records handed over before caught_up was set
        self._raise_config_error()
        await loop.run_in_executor(None, self._load_state)
        log.info(
            "webhooks: %d subscription(s), %d pending deliveries restored",
            len(self.book.subscriptions),
            self.book.pending(),
        )
        self._consumer = kafka.consumer(bootstrap, self.group, **{"fetch.wait.max.ms": 50})
        self._consumer.subscribe(
            [self.topics["events"], self.topics["billing"], self.topics["commands"]]
        )
        self.ready = True
        for target in self.targets.values():
            target.task = asyncio.ensure_future(self._run_target(target))

    _config_error: SecretError | None = None

    def _on_config(self, key: str, value: bytes | None) -> None:
        try:
            self._subscription_changed(key, value)
        except SecretError as exc:
            self._config_error = SecretError(f"subscription {key}: {exc}")

    def _raise_config_error(self) -> None:
        if self._config_error is not None:
            raise self._config_error

    async def run(self) -> None:
        await self.start()
        tasks = [asyncio.ensure_future(self._run_consumer()), asyncio.ensure_future(self._sweep())]
        stopper = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stopper and t.exception() is not None:
                self._stop.set()
                raise t.exception()  # type: ignore[misc]

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        self._stop.set()
        for target in list(self.targets.values()):
            await target.close(cancel_inflight=True)
        if self._follower is not None:
            self._follower.stop()
        if self._consumer is not None:
            consumer = self._consumer
            await asyncio.get_running_loop().run_in_executor(self._pool, consumer.close)
        self._pool.shutdown(wait=False)
        self._produce_outbox()
        self.out.close()

    @property
    def group(self) -> str:
        """The consumer group that follows call-events, billing and webhook-commands."""
        return f"{self.settings.app_id}-webhooks"

    def gauges(self) -> dict[str, tuple[str, tuple[str, ...], dict[tuple[str, ...], float]]]:
        """What each subscription owes and has in flight, and whether a 410 disabled it
        (taken on the service's loop, for /metrics)."""
        pending: dict[tuple[str, ...], float] = {}
        inflight: dict[tuple[str, ...], float] = {}
        disabled: dict[tuple[str, ...], float] = {}
        owed: dict[str, int] = {}
        for d in self.book.deliveries.values():
            if d.state not in SETTLED:
                owed[d.subscription_id] = owed.get(d.subscription_id, 0) + 1
        for sub_id, t in self.targets.items():
            pending[(sub_id,)] = float(owed.get(sub_id, 0))
            inflight[(sub_id,)] = float(len(t.inflight))
            disabled[(sub_id,)] = 1.0 if sub_id in self.book.disabled else 0.0
        return {
            "trunkline_webhook_pending": (
                "Deliveries a subscription is owed (due now or waiting for a retry)",
                ("subscription",),
                pending,
            ),
            "trunkline_webhook_in_flight": (
                "Requests to a subscription waiting for an answer",
                ("subscription",),
                inflight,
            ),
            "trunkline_webhook_subscription_disabled": (
                "1 when a 410 Gone disabled the subscription (`trunkline webhooks enable`)",
                ("subscription",),
                disabled,
            ),
        }

    def health(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "pending": self.book.pending(),
            "stats": dict(self.stats),
            "subscriptions": {
                sub_id: {
                    "usable": t.key is not None,
                    "disabled": sub_id in self.book.disabled,
                    "in_flight": len(t.inflight),
                    "next_due": self.book.next_due(sub_id),
                }
                for sub_id, t in self.targets.items()
            },
        }


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


async def serve(settings: Settings) -> None:
    service = WebhookService(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, service.stop)

    async def health(request: web.Request) -> web.Response:
        return web.json_response(service.health())

    state = metrics.install("webhooks-state", metrics.Snapshot())
    metrics.install("webhooks-lag", metrics.ConsumerLag(settings.kafka_bootstrap, [service.group]))

    async def prometheus(request: web.Request) -> web.Response:
        for name, (documentation, labels, samples) in service.gauges().items():
            state.update(name, documentation, labels, samples)
        body = await loop.run_in_executor(None, metrics.exposition)  # the lag asks the broker
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/health/", health)
    app.router.add_get("/metrics", prometheus)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.worker_web_host, settings.webhooks_web_port)
    try:
        await site.start()
        log.info("webhooks: health on %s/health/", settings.webhooks_url)
        await service.run()
    finally:
        await service.close()
        await runner.cleanup()


def run_webhooks(settings: Settings, loglevel: str = "info") -> None:
    logs.setup(loglevel, settings.log_format, "webhooks")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(settings))


__all__ = ["WebhookService", "run_webhooks", "serve"]
