"""The dialer's I/O: the providers' official SDKs and Kafka around the pure failover
machine (`edge.dialer.machine`). Thin. It runs inside the HTTP edge process (the API
hands it each request; see docs/design.md for why), under its own dialer id.

- **SDKs**, each pointed at the account's `apiBaseUrl`, never blocking the event loop:
  - Twilio: `twilio.rest.Client` with `RebasedAsyncTwilioHttpClient`, an
    `AsyncTwilioHttpClient` (aiohttp) that rewrites the scheme and host of every URL the
    SDK builds (the SDK only lets `edge`/`region` change the host's labels,
    `api.{edge}.{region}.twilio.com`, never the whole base URL); the SDK's `*_async`
    calls run on the loop.
  - Telnyx: `telnyx.AsyncTelnyx(base_url=apiBaseUrl + "/v2", max_retries=0)`: the SDK takes
    a base URL; its own retries are off, so failover stays ours.
  - Vonage: `vonage.Vonage` with `HttpClientOptions(api_host=...)`; the SDK always builds
    `https://{api_host}`, so a `requests` adapter mounted on its session rewrites that
    prefix to `apiBaseUrl` (which may be `http://`, for tests and on-premise gateways).
    It has no async client: its calls run in a small thread pool.
  (The blocking clients of Twilio and Telnyx in a thread pool were measured first: a
  2.4 ms request took tens to hundreds of ms under load, the pool's threads queueing for
  the GIL the event loop held; docs/benchmarks.md.)
- **Answers** are reduced to `providers.Outcome`: connect errors and connect timeouts are
  `NoConnection` (nothing was sent), a read timeout or a connection lost after sending is
  `NoResponse` (the call may exist), an error status is `Refused`.
- **Checks** after a `NoResponse`: Telnyx repeats the same request (same `command_id`:
  Telnyx drops the repeat and answers with the call it made); Twilio lists the calls from
  the attempt's From to its To since the attempt's start (`providers.twilio_match`);
  Vonage lists the calls since then with the same To. Nothing found (or the check itself
  failing) is a retryable `timeout`: the next provider tries.
- **Kafka**: the machine's Publish actions go out through the edge's producers: the
  request (to admission and the journal) with the decision profile, everything else
  with the history profile's linger (nothing waits for it within 50 ms). The dialer
  follows its own key of the `outbound` journal: at start it replays the last
  `TRUNKLINE_STATE_RETENTION_MS` of it and resumes what was pending, then takes the
  providers' reports (OutboundReport) the webhook edges add, fetched in batches
  (`JOURNAL_FETCH`: none of them is on a request's path).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import httpx
import requests
import telnyx
from prometheus_client import Counter, Histogram
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client as TwilioClient
from vonage import Auth, HttpClientOptions, Vonage
from vonage_http_client.errors import HttpRequestError
from vonage_voice import CreateCallRequest, ListCallsFilter

from edge.dialer import providers as pv
from edge.dialer.machine import (
    Action,
    Dial,
    Dialer,
    Failure,
    Hangup,
    Publish,
    Reply,
    report_from_record,
    request_id,
)
from schemas.codec import Codec, CodecError
from trunkline.core.aio import run_deadlines
from trunkline.core.kafka import KeyFollower, Producers, Profile

log = logging.getLogger("trunkline.dialer.io")
#: where an outbound request's time goes (the API's wait for its 201)
STAGES = Histogram(
    "trunkline_dialer_stage_seconds",
    "Outbound request stages: decision (request to admission and routing's answer), "
    "provider (one create-call request)",
    ["stage"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)
PROVIDER_REQUESTS = Counter(
    "trunkline_dialer_provider_requests_total", "Create-call requests, by provider and outcome",
    ["provider", "outcome"],
)  # fmt: skip

#: the journal follower's fetches. Live, it needs only the providers' reports (the rest
#: this dialer wrote itself), and none of them is on a request's path: fetching each
#: record as it landed (fetch.min.bytes 1) cost the broker a fetch per record, about two
#: per call, on the broker every call's decision crosses twice.
JOURNAL_FETCH = {"fetch.min.bytes": 64 * 1024, "fetch.wait.max.ms": 200}

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0


class ProviderAccount(Protocol):
    """What the dialer needs of a provider account (`edge.webhook.accounts.Account`)."""

    @property
    def id(self) -> str: ...

    @property
    def account_sid(self) -> str: ...

    @property
    def connection_id(self) -> str: ...

    @property
    def application_id(self) -> str: ...

    @property
    def api(self) -> str: ...

    def secret(self, name: str) -> str: ...


def _rebase(url: str, base: str) -> str:
    parts, to = urlsplit(url), urlsplit(base)
    return urlunsplit(parts._replace(scheme=to.scheme, netloc=to.netloc,
                                     path=to.path.rstrip("/") + parts.path))  # fmt: skip


class RebasedAsyncTwilioHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """Twilio's aiohttp client sending every request to `base` instead of api.twilio.com,
    with connect and read timeouts of our own (the SDK's take one number)."""

    def __init__(self, base: str) -> None:
        super().__init__(pool_connections=False)
        self.base = base
        self.session: aiohttp.ClientSession | None = None  # made on the loop, when first used

    async def request(
        self,
        method: str,
        url: str,
        params: Any = None,
        data: Any = None,
        headers: Any = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=CONNECT_TIMEOUT_S + READ_TIMEOUT_S,
                    connect=CONNECT_TIMEOUT_S,
                    sock_read=READ_TIMEOUT_S,
                )
            )
        async with self.session.request(
            method.upper(),
            _rebase(url, self.base),
            params=params,
            data=data,
            headers=headers,
            auth=aiohttp.BasicAuth(*auth) if auth else None,
            allow_redirects=allow_redirects,
        ) as resp:
            return TwilioResponse(resp.status, await resp.text(), resp.headers)


class _RebaseAdapter(HTTPAdapter):
    """Sends what the Vonage SDK addresses to https://{api_host} to `base` instead."""

    def __init__(self, host: str, base: str) -> None:
        super().__init__(max_retries=0)
        self.prefix, self.base = f"https://{host}", base.rstrip("/")

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        if request.url.startswith(self.prefix):
            request.url = self.base + request.url[len(self.prefix) :]
        kwargs["timeout"] = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        return super().send(request, *args, **kwargs)


def _aiohttp_outcome(exc: BaseException) -> pv.Outcome:
    text = f"{type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        return pv.NoConnection(text)
    return pv.NoResponse(text)  # sent (or maybe sent), no answer in time


def _requests_outcome(exc: requests.RequestException) -> pv.Outcome:
    text = str(exc)[:300]
    if isinstance(exc, requests.ConnectTimeout) or (
        isinstance(exc, requests.ConnectionError)
        and not isinstance(exc, requests.ReadTimeout)
        and ("NewConnectionError" in text or "Failed to establish" in text
             or "Connection refused" in text)
    ):  # fmt: skip
        return pv.NoConnection(text)
    return pv.NoResponse(text)


class ProviderClients:
    """SDK clients per account (rebuilt when the account changes), used from threads."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()

    def _get(self, kind: str, account: ProviderAccount, make: Callable[[], Any]) -> Any:
        key = (kind, account.id, account.api)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = make()
            return client

    def twilio(self, account: ProviderAccount) -> TwilioClient:
        def make() -> TwilioClient:
            return TwilioClient(
                account.account_sid,
                account.secret("authToken"),
                account_sid=account.account_sid,
                http_client=RebasedAsyncTwilioHttpClient(account.api),
            )

        client: TwilioClient = self._get("twilio", account, make)
        return client

    def telnyx(self, account: ProviderAccount) -> telnyx.AsyncTelnyx:
        def make() -> telnyx.AsyncTelnyx:
            return telnyx.AsyncTelnyx(
                api_key=account.secret("apiKey"),
                base_url=f"{account.api}/v2",
                max_retries=0,
                timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            )

        client: telnyx.AsyncTelnyx = self._get("telnyx", account, make)
        return client

    def vonage(self, account: ProviderAccount) -> Vonage:
        def make() -> Vonage:
            host = urlsplit(account.api).netloc or "api.nexmo.com"
            client = Vonage(
                Auth(application_id=account.application_id,
                     private_key=account.secret("privateKey")),
                HttpClientOptions(api_host=host, timeout=int(READ_TIMEOUT_S), max_retries=0),
            )  # fmt: skip
            client.http_client._session.mount("https://", _RebaseAdapter(host, account.api))
            return client

        client: Vonage = self._get("vonage", account, make)
        return client

    async def close(self) -> None:
        """Close the async clients' sessions (on the loop that made them)."""
        with self._lock:
            clients, self._clients = list(self._clients.items()), {}
        for (kind, _, _), client in clients:
            try:
                if kind == "twilio" and client.http_client.session is not None:
                    await client.http_client.session.close()
                elif kind == "telnyx":
                    await client.close()
            except Exception as exc:  # closing is best effort
                log.debug("closing a %s client: %s", kind, exc)

    # -- the three requests --------------------------------------------------------------
    async def create(
        self, kind: str, account: ProviderAccount, target: pv.Target, pool: ThreadPoolExecutor
    ) -> pv.Outcome:
        """One create-call request: Twilio and Telnyx on the loop, Vonage in the pool."""
        if kind == "VONAGE":
            return await asyncio.get_running_loop().run_in_executor(
                pool, self._vonage_create, account, target
            )
        try:
            if kind == "TWILIO":
                call = await self.twilio(account).calls.create_async(**pv.twilio_create(target))
                return pv.Created(str(call.sid))
            dialed = await self.telnyx(account).calls.dial(
                **pv.telnyx_dial(target, account.connection_id)
            )
            return pv.Created(dialed.data.call_control_id if dialed.data else "")
        except TwilioRestException as exc:
            return pv.Refused(exc.status, str(exc.code) if exc.code else None, str(exc.msg)[:300])
        except telnyx.APIStatusError as exc:
            return pv.telnyx_error(exc.status_code, exc.body)
        except telnyx.APIConnectionError as exc:
            cause = exc.__cause__
            if isinstance(cause, (httpx.ConnectError, httpx.ConnectTimeout)):
                return pv.NoConnection(str(cause)[:300])
            return pv.NoResponse(str(cause or exc)[:300])
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _aiohttp_outcome(exc)
        except Exception as exc:  # a secret missing, a model refusing a field...
            return _other(exc)

    def _vonage_create(self, account: ProviderAccount, target: pv.Target) -> pv.Outcome:
        try:
            fields = pv.vonage_create(target, account.id, account.secret("signatureSecret"))
            made = self.vonage(account).voice.create_call(CreateCallRequest(**fields))
            return pv.Created(made.uuid)
        except HttpRequestError as exc:
            try:
                body: object = exc.response.json()
            except ValueError:
                body = {"detail": exc.response.text[:300]}
            return pv.vonage_error(exc.response.status_code, body)
        except requests.RequestException as exc:
            return _requests_outcome(exc)
        except Exception as exc:
            return _other(exc)

    async def find(
        self, kind: str, account: ProviderAccount, target: pv.Target, since_ms: int,
        exclude: set[str], pool: ThreadPoolExecutor,
    ) -> str | None:  # fmt: skip
        """The call a timed-out create made, if any (Twilio, Vonage)."""
        since = datetime.fromtimestamp(since_ms / 1000, UTC)
        try:
            if kind == "TWILIO":
                calls = await self.twilio(account).calls.list_async(
                    to=target.to_number,
                    from_=target.from_number,
                    start_time_after=since.replace(hour=0, minute=0, second=0, microsecond=0),
                    limit=50,
                )
                rows = [{"sid": c.sid, "date_created": c.date_created} for c in calls]
                return pv.twilio_match(rows, since_ms, exclude)
            if kind == "VONAGE":
                return await asyncio.get_running_loop().run_in_executor(
                    pool, self._vonage_find, account, target, since, exclude
                )
        except Exception as exc:
            log.warning("call %s: looking the call up failed: %s", target.call_id, exc)
        return None

    def _vonage_find(
        self, account: ProviderAccount, target: pv.Target, since: datetime, exclude: set[str]
    ) -> str | None:
        found = self.vonage(account).voice.list_calls(
            ListCallsFilter(date_start=since.strftime("%Y-%m-%dT%H:%M:%SZ"))
        )
        calls_found = found[0] if isinstance(found, tuple) else found
        for c in calls_found or []:
            to = getattr(getattr(c, "to", None), "number", "")
            if to == target.to_number.lstrip("+") and c.uuid not in exclude:
                return str(c.uuid)
        return None

    async def hangup(
        self, kind: str, account: ProviderAccount, provider_call_id: str, pool: ThreadPoolExecutor
    ) -> None:
        try:
            if kind == "TWILIO":
                await self.twilio(account).calls(provider_call_id).update_async(status="completed")
            elif kind == "TELNYX":
                await self.telnyx(account).calls.actions.hangup(provider_call_id)
            else:
                await asyncio.get_running_loop().run_in_executor(
                    pool, self.vonage(account).voice.hangup, provider_call_id
                )
        except Exception as exc:
            log.warning("hanging up %s %s failed: %s", kind, provider_call_id, exc)


def _settle(future: asyncio.Future[Reply | None], reply: Reply | None) -> None:
    if not future.done():
        future.set_result(reply)


def _other(exc: Exception) -> pv.Outcome:
    if getattr(exc, "label", "") == "no_secret":  # this account cannot be used on this edge
        return pv.Refused(401, "no_secret", str(exc)[:300])
    return pv.Refused(0, None, f"{type(exc).__name__}: {exc}"[:300])


class DialerService:
    """The machine, its clients and its journal, inside the HTTP edge's loop."""

    def __init__(
        self,
        dialer_id: str,
        *,
        public_url: str,
        codec: Codec,
        out: Producers,
        topics: Mapping[str, str],
        accounts: Callable[[str], ProviderAccount | None],
        kinds: Callable[[], Mapping[str, str]],
        decision_timeout: float,
        retention: float,
        bootstrap: str,
        clients: ProviderClients | None = None,
    ) -> None:
        self.machine = Dialer(dialer_id, decision_timeout, retention)
        self.public_url = public_url
        self.codec = codec
        self.out = out
        self.topics = topics
        self.accounts = accounts
        self.kinds = kinds
        self.bootstrap = bootstrap
        self.clients = clients or ProviderClients()
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dialer-vonage")
        self.waiters: dict[str, list[asyncio.Future[Reply | None]]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.follower: KeyFollower | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self.started: dict[tuple[str, int], int] = {}  # (call, attempt) -> start (ms)
        self._submitted: dict[str, float] = {}  # call -> when the API submitted it
        self.dials = 0  # provider create requests sent (bench: requests per call)

    @property
    def dialer_id(self) -> str:
        return self.machine.dialer_id

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self, journal_topic: str) -> None:
        """Replay this dialer's journal, resume what was pending, then follow it."""
        self.loop = asyncio.get_running_loop()
        since = int((time.time() - self.machine.retention) * 1000)
        self.follower = KeyFollower(
            self.bootstrap,
            f"dialer-{self.dialer_id}",
            journal_topic,
            self.dialer_id,
            self._journal_bytes,
            start_ms=since,
            **JOURNAL_FETCH,
        )
        self.follower.start()
        loaded = await self.loop.run_in_executor(None, self.follower.caught_up.wait, 60.0)
        if not loaded:
            log.warning("dialer %s: journal not fully read after 60 s", self.dialer_id)
        pending = [c for c in self.machine.calls.values() if c.state.value not in
                   ("ended", "failed", "refused")]  # fmt: skip
        self.apply(self.machine.resume(time.time()))
        log.info("dialer %s: journal replayed, %d call(s) resumed", self.dialer_id, len(pending))
        self._timer = asyncio.create_task(self._timers())

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.follower is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.follower.stop)
        await self.clients.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- inputs -----------------------------------------------------------------------------
    def submit(self, record: dict[str, Any]) -> None:
        """A new request from the API (already validated): journal it, ask admission."""
        self._submitted[record["envelope"]["call_id"]] = time.monotonic()
        self.apply(self.machine.request(record, self.kinds(), time.time()))
        journaled = Publish(
            ("admission", "outbound"),
            record["business_id"],
            "OutboundCallRequested",
            record,
            {"outbound": self.dialer_id},
        )
        self.apply([journaled])

    async def reply(self, call_id: str, timeout: float) -> Reply | None:
        known = self.machine.replies.get(call_id)
        if known is not None:
            return known
        assert self.loop is not None
        # one future per waiting request, resolved by `apply` (or with None at the
        # timeout) and awaited bare: the request's task runs in the loop iteration after
        # the answer. `wait_for(shield(...))` took three iterations (shield's callback,
        # wait_for's, the task), each as long as everything else the loop had ready.
        future: asyncio.Future[Reply | None] = self.loop.create_future()
        self.waiters.setdefault(call_id, []).append(future)
        timer = self.loop.call_later(timeout, _settle, future, None)
        try:
            return await future
        finally:
            timer.cancel()
            waiting = self.waiters.get(call_id, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self.waiters.pop(call_id, None)

    def decision(self, name: str, record: dict[str, Any]) -> None:
        submitted = self._submitted.pop(record["envelope"]["call_id"], None)
        if submitted is not None:
            STAGES.labels("decision").observe(time.monotonic() - submitted)
        self.apply(self.machine.decision(name, record, time.time()))

    # -- outputs ----------------------------------------------------------------------------
    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self._publish(action)
            elif isinstance(action, Dial):
                self._spawn(self._dial(action))
            elif isinstance(action, Hangup):
                self._spawn(self._hangup(action))
            elif isinstance(action, Reply):
                self._submitted.pop(action.call_id, None)
                for future in self.waiters.pop(action.call_id, []):
                    _settle(future, action)
        self._wake.set()

    def _publish(self, p: Publish) -> None:
        try:
            value = self.codec.encode(p.name, p.record)
        except CodecError as exc:
            log.error("cannot encode %s: %s", p.name, exc)
            return
        call_id = p.record["envelope"]["call_id"]
        for dest in p.dests:
            key = p.keys.get(dest) or (call_id if dest == "call-events" else p.key)
            # only the request itself is on the API's path (admission's copy and the
            # journal's, which must be written before the decision can come back); the
            # rest lingers with the history: the media node needs its assignment only when
            # the callee answers, routing its CallAccepted within the redirect deadline
            urgent = p.name == "OutboundCallRequested" and dest in ("admission", "outbound")
            profile: Profile = "decision" if urgent else "history"
            self.out.produce(self.topics[dest], key.encode(), value, profile=profile)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _target(self, call_id: str, attempt: int) -> tuple[str, ProviderAccount | None, pv.Target]:
        call = self.machine.calls[call_id]
        plan = call.attempts[attempt]
        routed = call.routed or {}
        target = pv.Target(
            call_id,
            attempt,
            self.dialer_id,
            request_id(call_id, attempt),
            str(call.request["to_number"]),
            plan.from_number,
            str(routed.get("backend_media_url") or ""),
            self.public_url,
            int(call.request.get("ring_timeout_s") or 30),
        )
        return plan.provider, self.accounts(plan.account_id), target

    async def _dial(self, dial: Dial) -> None:
        assert self.loop is not None
        call = self.machine.calls.get(dial.call_id)
        if call is None:
            return
        kind, account, target = self._target(dial.call_id, dial.attempt)
        outcome: str | Failure
        lookup = False
        if account is None:
            outcome = Failure("auth", True, f"account {call.attempts[dial.attempt].account_id} "
                              "is not configured on this edge")  # fmt: skip
        elif dial.check and kind != "TELNYX":
            # since the attempt began, or (after a restart) since the call was requested
            requested = int(call.request["envelope"]["occurred_at"])
            since = self.started.get((dial.call_id, dial.attempt), requested)
            exclude = {
                c.provider_call_id for c in self.machine.calls.values() if c.provider_call_id
            }
            found = await self.clients.find(kind, account, target, since, exclude, self.pool)
            lookup = found is not None
            outcome = found or Failure(
                "timeout", True, "no answer to create-call and no call found by looking it up"
            )
        else:
            self.started.setdefault((dial.call_id, dial.attempt), int(time.time() * 1000))
            self.dials += 1
            sent = time.monotonic()
            answer = await self.clients.create(kind, account, target, self.pool)
            STAGES.labels("provider").observe(time.monotonic() - sent)
            PROVIDER_REQUESTS.labels(kind.lower(), type(answer).__name__.lower()).inc()
            outcome = pv.classify(kind, answer)
            if dial.check and outcome == "unclear":  # Telnyx's repeat timed out as well
                outcome = Failure("timeout", True, "no answer to create-call, twice")
            log.debug("call %s: attempt %d via %s: %s", dial.call_id, dial.attempt, kind, answer)
        self.apply(self.machine.result(dial.call_id, dial.attempt, outcome, time.time(), lookup))

    async def _hangup(self, h: Hangup) -> None:
        assert self.loop is not None
        call = self.machine.calls.get(h.call_id)
        if call is None:
            return
        plan = call.attempts[h.attempt]
        account = self.accounts(plan.account_id)
        if account is not None:
            await self.clients.hangup(plan.provider, account, h.provider_call_id, self.pool)

    # -- the journal (the follower's thread) ----------------------------------------------
    def _journal_bytes(self, value: bytes) -> None:
        try:
            name, record = self.codec.decode(value)
        except CodecError as exc:
            log.error("undecodable journal record: %s", exc)
            return
        assert self.follower is not None
        if not self.follower.caught_up.is_set():  # replay: before start() goes on
            try:  # at the record's own time: deadlines fall where they would have
                at = int(record["envelope"]["occurred_at"]) / 1000
                self.machine.replay(name, record, self.kinds(), at)
            except Exception:
                log.exception("journal record %s could not be replayed", name)
            return
        if name == "OutboundReport" and self.loop is not None:
            self.loop.call_soon_threadsafe(self._report, record)

    def _report(self, record: dict[str, Any]) -> None:
        try:
            actions = self.machine.report(
                record["envelope"]["call_id"], report_from_record(record), time.time()
            )
        except Exception:
            log.exception("report %s could not be applied", record["envelope"]["event_id"])
            return
        self.apply(actions)

    async def _timers(self) -> None:
        await run_deadlines(
            self.machine.next_deadline, lambda now: self.apply(self.machine.expire(now)), self._wake
        )
