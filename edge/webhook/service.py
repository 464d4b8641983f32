"""The webhook edge service: the aiohttp app, Kafka, and the Telnyx command sender. Thin.

Each route reads the body (at most 64 KiB), hands it to its provider's pure adapter
(parse, tie it to an account, verify the signature, decode), and only then to the webhook
call core (`edge.webhook.calls`), whose Publish outputs go to Kafka through one
`Producers("decision")` and whose Answer outputs wake the requests waiting for that
call. A `KeyFollower` reads this edge's decisions, and `CompactedFollower`s keep the
provider numbers and the provider accounts (secrets resolved from this process's
environment; the edge refuses to start when a configured account's secret cannot be
resolved, naming the variable or file).

Bad input never crashes it: every refusal is a `WebhookError` with its status and short
reason, counted by provider and label (`trunkline_webhook_refused_total`), and nothing
is published for it. Anything unexpected is logged and answered 500.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from edge.dialer.machine import Call, Reply
from edge.dialer.service import DialerService
from edge.webhook import api, telnyx, twilio, vonage
from edge.webhook.accounts import Account, Accounts, account_from_record
from edge.webhook.base import (
    MAX_BODY,
    CallEvent,
    Command,
    Decision,
    HttpAnswer,
    Ignored,
    InboundCall,
    OutboundEvent,
    Provider,
    WebhookError,
)
from edge.webhook.calls import Answer, NumberEntry, Out, Publish, WebhookCalls
from schemas.codec import Codec, CodecError, make_codec
from trunkline.core import logs
from trunkline.core.aio import run_deadlines, serve_until_signalled, tune_gc
from trunkline.core.config import SecretError
from trunkline.core.kafka import (
    CompactedFollower,
    KeyFollower,
    Producers,
    Profile,
    PublishError,
    read_compacted,
)
from trunkline.core.settings import Settings
from trunkline.core.topics import (
    ADMISSION,
    API_KEYS,
    ASSIGNMENTS,
    BUSINESSES,
    CALL_EVENTS,
    DECISIONS,
    NUMBERS,
    OUTBOUND,
    PROVIDERS,
    ROUTES,
    ROUTING,
)

log = logging.getLogger("trunkline.webhook.edge")

REQUESTS = Counter(
    "trunkline_webhook_requests_total", "Webhook requests by provider and route", ["route"]
)
REFUSED = Counter(
    "trunkline_webhook_refused_total",
    "Webhook requests refused (nothing published), by provider and why",
    ["provider", "reason"],
)
COMMANDS = Counter(
    "trunkline_webhook_commands_total", "Provider API commands, by outcome", ["outcome"]
)
PUBLISHED = Counter("trunkline_webhook_published_total", "Events published", ["outcome"])
RESPONSES = Counter(
    "trunkline_webhook_responses_total",
    "Responses the edge sent, by route and code",
    ["route", "code"],
)
LATENCY = Histogram(
    "trunkline_webhook_request_seconds",
    "A request's time to its answer, by route (a voice webhook: the offer to the decision)",
    ["route"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
)
API_ANSWERS = Counter("trunkline_api_answers_total", "REST API answers by HTTP status", ["status"])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _http(answer: HttpAnswer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)


def _ok() -> web.Response:
    return web.json_response({"ok": True})


class WebhookEdge:
    def __init__(
        self,
        settings: Settings,
        edge_id: str,
        host: str,
        port: int,
        *,
        env: dict[str, str] | None = None,
        codec: Codec | None = None,
        dialer_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.edge_id = edge_id
        self.dialer_id = dialer_id or edge_id
        self.host, self.port = host, port
        self.env = env
        self.codec = codec or make_codec(settings.schema_registry_url)
        self.accounts = Accounts()
        self.numbers: dict[tuple[str, str], NumberEntry] = {}
        self._number_key: dict[str, tuple[str, str]] = {}
        self.core = WebhookCalls(
            edge_id,
            directory=lambda provider, number: self.numbers.get((provider.value, number)),
            decision_timeout=settings.decision_timeout_s,
            retention=settings.state_retention_ms / 1000,
        )
        prefix = settings.topic_prefix
        self.topics = {
            "admission": ADMISSION.name(prefix),
            "call-events": CALL_EVENTS.name(prefix),
            "outbound": OUTBOUND.name(prefix),
            "routing": ROUTING.name(prefix),
            "assignments": ASSIGNMENTS.name(prefix),
        }
        self.directory = api.Directory()  # numbers, routes, businesses for the REST API
        self.api_keys: dict[str, api.ApiKey] = {}  # by SHA-256 of the key
        self._api_key_digest: dict[str, str] = {}  # key id -> digest
        self.dialer: DialerService | None = None
        self.out: Producers | None = None
        self.waiters: dict[str, asyncio.Future[Decision]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._followers: list[KeyFollower | CompactedFollower] = []
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.Task[None] | None = None
        self.runner: web.AppRunner | None = None
        self.http: ClientSession | None = None
        self.ready = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    def load_accounts(self) -> None:
        """Read the provider accounts and resolve their secrets; raise SecretError naming
        every variable or file that is missing (the edge must not start without them)."""
        topic = PROVIDERS.name(self.settings.topic_prefix)
        try:
            records = read_compacted(self.settings.kafka_bootstrap, topic)
        except PublishError:
            log.warning("no %s topic: no provider accounts yet", topic)
            records = {}
        for key, value in records.items():
            self._account_record(key.decode(), value)
        missing = [f"account {a.id}: {a.missing}" for a in self.accounts.unusable()]
        if missing:
            raise SecretError("cannot resolve provider secrets: " + "; ".join(missing))

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.load_accounts()
        s = self.settings
        self.out = Producers(s.kafka_bootstrap, ("decision", "history"), name="webhook-edge")
        for key in dict.fromkeys((self.edge_id, self.dialer_id)):
            self._followers.append(
                KeyFollower(
                    s.kafka_bootstrap,
                    f"webhook-edge-{key}",
                    DECISIONS.name(s.topic_prefix),
                    key,
                    self._decision_bytes,
                )
            )
        for topic, on_record in (
            (NUMBERS.name(s.topic_prefix), self._number_record),
            (PROVIDERS.name(s.topic_prefix), self._account_record),
            (ROUTES.name(s.topic_prefix), self._route_record),
            (BUSINESSES.name(s.topic_prefix), self._business_record),
            (API_KEYS.name(s.topic_prefix), self._api_key_record),
        ):
            try:
                self._followers.append(
                    CompactedFollower(
                        s.kafka_bootstrap, f"webhook-edge-{self.edge_id}-{topic}", topic, on_record
                    )
                )
            except PublishError:
                log.warning("no %s topic: run `trunkline topics apply`", topic)
        for follower in self._followers:
            follower.start()
        # take no traffic before every configured number is known (a call to a number
        # still being read would be refused as not configured)
        for follower in self._followers:
            if isinstance(follower, CompactedFollower):
                loaded = await self.loop.run_in_executor(None, follower.caught_up.wait, 30.0)
                if not loaded:
                    log.warning("config not fully read after 30 s; starting anyway")
        self.http = ClientSession(timeout=ClientTimeout(total=5))
        self.dialer = DialerService(
            self.dialer_id,
            public_url=s.public_url,
            codec=self.codec,
            out=self.out,
            topics=self.topics,
            accounts=lambda account_id: self.accounts.by_id.get(account_id),
            kinds=lambda: {a.id: a.provider.value for a in self.accounts.by_id.values()},
            decision_timeout=s.decision_timeout_s,
            retention=s.state_retention_ms / 1000,
            bootstrap=s.kafka_bootstrap,
        )
        await self.dialer.start(OUTBOUND.name(s.topic_prefix))
        app = self.build_app()
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        self._timer = asyncio.create_task(self._timers())
        self.ready.set()
        log.info(
            "webhook edge %s listening on %s:%s, public URL %s, accounts: %s",
            self.edge_id,
            self.host,
            self.port,
            self.settings.public_url,
            ", ".join(f"{a.id} ({a.provider.title})" for a in self.accounts.by_id.values())
            or "none",
        )

    async def stop(self) -> None:
        if self._timer:
            self._timer.cancel()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.dialer is not None:
            await self.dialer.stop()
        for task in list(self._tasks):
            task.cancel()
        if self.http is not None:
            await self.http.close()
        loop = asyncio.get_running_loop()
        for follower in self._followers:
            await loop.run_in_executor(None, follower.stop)
        if self.out is not None:
            await loop.run_in_executor(None, self.out.close)

    def local_port(self) -> int:
        assert self.runner is not None
        for addr in self.runner.addresses:
            return int(addr[1])
        raise RuntimeError("not listening")

    # -- the app ----------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._refusals])
        app.router.add_post("/webhooks/twilio/voice", self.twilio_voice)
        app.router.add_post("/webhooks/twilio/status", self.twilio_status)
        app.router.add_post("/webhooks/telnyx", self.telnyx_event)
        app.router.add_get("/webhooks/vonage/answer", self.vonage_answer)
        app.router.add_post("/webhooks/vonage/answer", self.vonage_answer)
        app.router.add_post("/webhooks/vonage/event", self.vonage_event)
        app.router.add_post("/v1/calls", self.api_create)
        app.router.add_get("/v1/calls/{call_id}", self.api_show)
        app.router.add_get("/health", self.health)
        app.router.add_get("/health/", self.health)
        app.router.add_get("/metrics", self.metrics)
        return app

    @web.middleware
    async def _refusals(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        provider = request.path.split("/")[2] if request.path.startswith("/webhooks/") else "-"
        # the route's pattern, not the raw path: a scanner's random paths are one label
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        REQUESTS.labels(route).inc()
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except WebhookError as exc:
            REFUSED.labels(provider, exc.label).inc()
            log.info(
                "refused %s %s from %s: %s %s",
                request.method,
                request.path,
                request.remote,
                exc.status,
                exc.reason,
            )
            status = exc.status
            return web.json_response({"error": exc.reason}, status=exc.status)
        except web.HTTPException as exc:
            status = exc.status
            if exc.status >= 400:
                REFUSED.labels(provider, f"http_{exc.status}").inc()
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return web.json_response({"error": "internal error"}, status=500)
        finally:
            RESPONSES.labels(route, str(status)).inc()
            LATENCY.labels(route).observe(time.perf_counter() - started)

    async def _body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise WebhookError(413, f"body over {MAX_BODY // 1024} KiB", "too_large")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise WebhookError(413, f"body over {MAX_BODY // 1024} KiB", "too_large") from None

    def _public_url(self, request: web.Request) -> str:
        return self.settings.public_url + request.path_qs

    @staticmethod
    def _headers(request: web.Request) -> dict[str, str]:
        return {k.lower(): v for k, v in request.headers.items()}

    # -- Twilio ---------------------------------------------------------------------------
    async def _twilio(self, request: web.Request) -> tuple[Account, list[tuple[str, str]]]:
        body = await self._body(request)
        params, is_json = twilio.parse(body, request.content_type)
        account = self.accounts.find(
            Provider.TWILIO,
            request.query.get("account", ""),
            account_sid=twilio.account_sid(params),
        )
        twilio.verify(
            account.secret("authToken"),
            self._public_url(request),
            params,
            self._headers(request),
            body,
            is_json,
        )
        return account, params

    async def twilio_voice(self, request: web.Request) -> web.Response:
        account, params = await self._twilio(request)
        call = twilio.voice_call(params, account.id, request.remote or "")
        try:
            decision = await self._decide(call)
        except WebhookError as exc:
            if exc.label != "unknown_number":
                raise
            REFUSED.labels("twilio", exc.label).inc()
            log.info("call %s: %s: TwiML Reject", call.provider_call_id, exc.reason)
            return _http(twilio.reject())
        return _http(twilio.answer(decision))

    async def twilio_status(self, request: web.Request) -> web.Response:
        account, params = await self._twilio(request)
        if request.query.get("callQueueId"):  # a call our dialer placed
            self._outbound(
                twilio.outbound_status(
                    params, dict(request.query), self._headers(request), account.id
                )
            )
            return web.Response(status=204)
        event = twilio.status_event(params, self._headers(request), account.id)
        self._event(event)
        return web.Response(status=204)

    # -- Telnyx ---------------------------------------------------------------------------
    async def telnyx_event(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        data = telnyx.parse(body, request.content_type)
        account = self.accounts.find(
            Provider.TELNYX,
            request.query.get("account", ""),
            connection_id=telnyx.connection_id(data),
        )
        telnyx.verify(account.public_key, self._headers(request), body, time.time())
        decoded = telnyx.decode(data, account.id)
        if isinstance(decoded, Ignored):
            return _ok()
        if isinstance(decoded, OutboundEvent):
            self._outbound(decoded)
            return _ok()
        if isinstance(decoded, CallEvent):
            self._event(decoded)
            return _ok()
        account.secret("apiKey")  # no commands can be sent without it: refuse now
        try:
            outs = self.core.offer(decoded, time.time())
        except WebhookError as exc:
            if exc.label == "unknown_number":
                self._spawn(self._command(account, telnyx.reject(decoded)))
            raise
        self._spawn(self._answer_telnyx(account, decoded, outs))
        return _ok()

    async def _answer_telnyx(self, account: Account, call: InboundCall, outs: list[Out]) -> None:
        decision = await self._settled(call.call_id, outs)
        await self._command(account, telnyx.command(call, decision))

    async def _command(self, account: Account, command: Command) -> None:
        """Send a provider API command, retrying transport errors and 5xx a few times (the
        command id makes a repeat harmless)."""
        assert self.http is not None
        url = account.api + command.path
        headers = {"Authorization": f"Bearer {account.secret('apiKey')}"}
        for attempt, pause in enumerate((0.2, 0.5, 1.0, 0.0)):
            try:
                async with self.http.request(
                    command.method, url, json=command.body, headers=headers
                ) as resp:
                    if resp.status < 300:
                        COMMANDS.labels("ok").inc()
                        return
                    text = (await resp.text())[:200]
                    if resp.status < 500 and resp.status != 429:
                        COMMANDS.labels("refused").inc()
                        log.error("%s %s: %s %s", command.method, command.path, resp.status, text)
                        return
                    log.warning(
                        "%s %s: %s (attempt %d)",
                        command.method,
                        command.path,
                        resp.status,
                        attempt + 1,
                    )
            except (ClientError, TimeoutError) as exc:
                log.warning(
                    "%s %s: %s (attempt %d)", command.method, command.path, exc, attempt + 1
                )
            if pause:
                await asyncio.sleep(pause)
        COMMANDS.labels("failed").inc()
        log.error("%s %s: gave up", command.method, command.path)

    # -- Vonage ---------------------------------------------------------------------------
    async def vonage_answer(self, request: web.Request) -> web.Response:
        account = self.accounts.find(Provider.VONAGE, request.query.get("account", ""))
        vonage.check_answer_token(account.secret("answerToken"), request.query.get("token", ""))
        if request.method == "POST":
            params: dict[str, Any] = vonage.parse_json(
                await self._body(request), request.content_type
            )
        else:
            params = dict(request.query)
        call = vonage.answer_call(params, account.id)
        decision = await self._decide(call)
        return _http(vonage.answer(decision, call))

    async def vonage_event(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        data = vonage.parse_json(body, request.content_type)
        token = vonage.bearer(self._headers(request))
        account = self.accounts.find(
            Provider.VONAGE,
            request.query.get("account", ""),
            application_id=vonage.unverified_application_id(token),
        )
        vonage.verify(account.secret("signatureSecret"), token, body, time.time())
        if request.query.get("callQueueId"):  # a call our dialer placed
            outbound = vonage.outbound_event(
                data, request.query, account.id, account.secret("signatureSecret")
            )
            if isinstance(outbound, OutboundEvent):
                self._outbound(outbound)
            return web.Response(status=204)
        decoded = vonage.event(data, account.id)
        if isinstance(decoded, CallEvent):
            self._event(decoded)
        return web.Response(status=204)

    # -- the REST API (outbound calls) ------------------------------------------------------
    @staticmethod
    def _api_error(exc: api.ApiError, call_id: str = "", code: str | None = None) -> web.Response:
        body = exc.body()
        if call_id:
            body["id"] = call_id
        if code:
            body["code"] = code
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        API_ANSWERS.labels(str(exc.status)).inc()
        return web.json_response(body, status=exc.status, headers=headers)

    async def api_create(self, request: web.Request) -> web.Response:
        """POST /v1/calls: an outbound call, answered once admission and routing took it
        and the first provider took the request (201), or with the refusal."""
        assert self.dialer is not None
        try:
            key = api.authenticate(request.headers.get("Authorization", ""), self.api_keys)
            body = await self._body(request)
            req = api.parse_body(body, request.content_type)
            idempotency = request.headers.get("Idempotency-Key", "")
            if len(idempotency) > 255:
                raise api.ApiError(
                    400, "Idempotency-Key: at most 255 characters", "Idempotency-Key"
                )
            record = api.outbound_request(
                req,
                key,
                self.directory,
                dialer_id=self.dialer_id,
                idempotency_key=idempotency,
                fresh_id=lambda: str(uuid.uuid4()),
                now=time.time(),
            )
        except api.ApiError as exc:
            log.info("refused %s %s: %s %s", request.method, request.path, exc.status, exc.message)
            return self._api_error(exc)
        call_id = record["envelope"]["call_id"]
        held = self.dialer.machine.calls.get(call_id)
        if held is not None and held.request.get("request_sha256") != record["request_sha256"]:
            return self._api_error(
                api.ApiError(
                    409,
                    "Idempotency-Key: already used for a request with another body",
                    "Idempotency-Key",
                ),
                call_id,
            )
        if held is None:
            self.dialer.submit(record)
        wait = self.settings.decision_timeout_s + 25.0 * len(record["providers"]) + 5.0
        reply = await self.dialer.reply(call_id, wait)
        return self._api_answer(call_id, reply)

    def _api_answer(self, call_id: str, reply: Reply | None) -> web.Response:
        assert self.dialer is not None
        if reply is None:
            return self._api_error(
                api.ApiError(504, "no provider took the call in time", "", None), call_id
            )
        if reply.outcome == "refused":
            return self._api_error(
                api.refusal(reply.status, reply.reason, reply.retry_after_s), call_id
            )
        if reply.outcome == "failed":
            return self._api_error(
                api.ApiError(reply.status, reply.reason, reply.field, reply.retry_after_s),
                call_id,
                reply.code,
            )
        call = self.dialer.machine.calls.get(call_id)
        API_ANSWERS.labels("201").inc()
        return web.json_response(_call_view(call) if call else {"id": call_id}, status=201)

    async def api_show(self, request: web.Request) -> web.Response:
        """GET /v1/calls/{id}: the call's queue entry (from the history, through the
        sink's read API) with its attempts (this dialer's view when it holds the call)."""
        assert self.dialer is not None
        try:
            key = api.authenticate(request.headers.get("Authorization", ""), self.api_keys)
        except api.ApiError as exc:
            return self._api_error(exc)
        call_id = request.match_info["call_id"]
        call = self.dialer.machine.calls.get(call_id)
        entry = await self._queue_entry(call_id)
        business = call.business_id if call else str((entry or {}).get("business_id") or "")
        if (call is None and entry is None) or business != key.business_id:
            return self._api_error(api.ApiError(404, f"call {call_id} not found", "id"))
        view: dict[str, Any] = _call_view(call) if call else {"id": call_id}
        if entry is not None:
            view["dialStatus"] = view.get("status")
            view["status"] = entry.get("status")
            view["queueEntry"] = entry
        return web.json_response(view)

    async def _queue_entry(self, call_id: str) -> dict[str, Any] | None:
        assert self.http is not None
        url = f"{self.settings.sink_url}/calls/{call_id}/"
        try:
            async with self.http.get(url, timeout=ClientTimeout(total=3)) as resp:
                if resp.status != 200:
                    return None
                entry: dict[str, Any] = await resp.json()
                return entry
        except (ClientError, TimeoutError, ValueError) as exc:
            log.debug("queue entry %s: the sink did not answer: %s", call_id, exc)
            return None

    # -- health -----------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "edge_id": self.edge_id,
                "public_url": self.settings.public_url,
                "accounts": {
                    a.id: {"provider": a.provider.title, "usable": not a.missing}
                    for a in self.accounts.by_id.values()
                },
                "numbers": len(self.numbers),
                "calls": len(self.core.entries),
                "waiting": len(self.waiters),
                "dialer": {
                    "id": self.dialer_id,
                    "calls": len(self.dialer.machine.calls) if self.dialer else 0,
                    "provider_requests": self.dialer.dials if self.dialer else 0,
                },
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- the core's outputs -------------------------------------------------------------------
    async def _decide(self, call: InboundCall) -> Decision:
        return await self._settled(call.call_id, self.core.offer(call, time.time()))

    async def _settled(self, call_id: str, outs: list[Out]) -> Decision:
        """Apply the core's outputs, then wait (if need be) for the call's answer."""
        self._apply(outs)
        decision = self.core.answer_of(call_id)
        if decision is not None:
            return decision
        assert self.loop is not None
        future = self.waiters.get(call_id)
        if future is None:
            future = self.waiters[call_id] = self.loop.create_future()
        # shielded: a client that goes away must not cancel the answer for its retries
        return await asyncio.shield(future)

    def _apply(self, outs: list[Out]) -> None:
        for out in outs:
            if isinstance(out, Publish):
                self._publish(out)
            elif isinstance(out, Answer):
                future = self.waiters.pop(out.call_id, None)
                if future is not None and not future.done():
                    future.set_result(out.decision)
        self._wake.set()

    def _event(self, event: CallEvent) -> None:
        outs = self.core.on_event(event, time.time())
        log.debug(
            "call %s: %s %s -> %s",
            event.call_id,
            event.provider.title,
            event.status,
            ", ".join(o.name for o in outs) or "history only (logged)",
            extra=logs.call(event.call_id),
        )
        self._apply(list(outs))

    def _outbound(self, event: OutboundEvent) -> None:
        log.debug(
            "call %s: %s %s for attempt %d -> dialer %s",
            event.call_id,
            event.provider.title,
            event.status,
            event.attempt,
            event.dialer_id,
        )
        self._apply(list(self.core.on_outbound(event, time.time())))

    def _publish(self, out: Publish) -> None:
        assert self.out is not None
        try:
            value = self.codec.encode(out.name, out.record)
        except CodecError as exc:
            log.error("cannot encode %s: %s", out.name, exc)
            PUBLISHED.labels("unencodable").inc()
            return
        profile: Profile = "history" if out.dest == "outbound" else "decision"
        self.out.produce(self.topics[out.dest], out.key.encode(), value, profile=profile)
        PUBLISHED.labels("queued").inc()
        if log.isEnabledFor(logging.DEBUG):
            call_id = out.record["envelope"]["call_id"]
            log.debug("call %s: %s to %s", call_id, out.name, out.dest, extra=logs.call(call_id))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- followers (their threads) --------------------------------------------------------------
    def _decision_bytes(self, value: bytes) -> None:
        try:
            name, record = self.codec.decode(value)
        except CodecError as exc:
            log.error("undecodable decision: %s", exc)
            return
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._on_decision, name, record)

    def _on_decision(self, name: str, record: dict[str, Any]) -> None:
        if self.dialer is not None and record.get("edge_id") == self.dialer_id:
            self.dialer.decision(name, record)  # an outbound call's (others are ignored)
        self._apply(self.core.on_decision(name, record, time.time()))

    def _number_record(self, phone_id: str, value: bytes | None) -> None:
        """Provider numbers by (provider, number): a plain dict swap, safe under the GIL."""
        old = self._number_key.pop(phone_id, None)
        if old is not None:
            self.numbers.pop(old, None)
        if value is None:
            return
        self.directory.numbers.pop(phone_id, None)
        try:
            _, record = self.codec.decode(value)
        except CodecError as exc:
            log.error("undecodable number %s: %s", phone_id, exc)
            return
        self.directory.numbers[phone_id] = record
        if record["provider"] == "SIP":
            return
        key = (record["provider"], record["number"])
        self.numbers[key] = NumberEntry(
            record["id"], record["business_id"], record.get("provider_account_id") or ""
        )
        self._number_key[phone_id] = key

    def _config_record(self, table: dict[str, Any], key: str, value: bytes | None) -> None:
        """A config record into one of the API's tables (a plain dict swap)."""
        if value is None:
            table.pop(key, None)
            return
        try:
            _, record = self.codec.decode(value)
        except CodecError as exc:
            log.error("undecodable config record %s: %s", key, exc)
            return
        table[key] = record

    def _route_record(self, key: str, value: bytes | None) -> None:
        self._config_record(self.directory.routes, key, value)

    def _business_record(self, key: str, value: bytes | None) -> None:
        self._config_record(self.directory.businesses, key, value)

    def _api_key_record(self, key_id: str, value: bytes | None) -> None:
        old = self._api_key_digest.pop(key_id, None)
        if old is not None:
            self.api_keys.pop(old, None)
        records: dict[str, Any] = {}
        self._config_record(records, key_id, value)
        record = records.get(key_id)
        if record is not None:
            self.api_keys[record["sha256"]] = api.ApiKey(
                record["id"], record["business_id"], record["sha256"]
            )
            self._api_key_digest[key_id] = record["sha256"]

    def _account_record(self, account_id: str, value: bytes | None) -> None:
        if value is None:
            self.accounts.remove(account_id)
            self.directory.kinds.pop(account_id, None)
            return
        try:
            _, record = self.codec.decode(value)
        except CodecError as exc:
            log.error("undecodable provider account %s: %s", account_id, exc)
            return
        account = account_from_record(record, self.env)
        self.directory.kinds[account.id] = account.provider.value
        if account.missing and self.ready.is_set():
            log.error("provider account %s cannot be used: %s", account.id, account.missing)
        self.accounts.put(account)

    # -- timers ---------------------------------------------------------------------------------
    async def _timers(self) -> None:
        await run_deadlines(
            self.core.next_deadline, lambda now: self._apply(self.core.expire(now)), self._wake
        )


def _call_view(call: Call) -> dict[str, Any]:
    """An outbound call as the API shows it (camelCase, the dialer's view)."""
    current = call.attempts[call.current] if call.attempts else None
    return {
        "id": call.call_id,
        "status": call.state.value,
        "provider": current.account_id if current else None,
        "providerKind": current.provider.lower() if current else None,
        "providerCallId": call.provider_call_id or None,
        "backend": (call.routed or {}).get("backend_id"),
        "to": call.request.get("to_number"),
        "from": current.from_number if current else call.request.get("from_number"),
        "fromNumberId": call.request.get("phone_id"),
        "metadata": dict(call.request.get("metadata") or {}),
        "attempts": [
            {
                "attempt": int(t["attempt"]) + 1,
                "provider": t["account_id"],
                "providerKind": str(t["provider"]).lower(),
                "outcome": "failed" if "reason" in t else "placed",
                "providerCallId": t.get("provider_call_id") or None,
                **(
                    {
                        "reason": t["reason"],
                        "httpStatus": t.get("http_status"),
                        "errorCode": t.get("provider_error_code"),
                        "retryable": t.get("retryable"),
                    }
                    if "reason" in t
                    else {}
                ),
            }
            for t in call.tried
        ],
    }


async def run_webhook_edge(edge: WebhookEdge) -> None:
    tune_gc()
    await serve_until_signalled(edge, lambda: log.info("webhook edge %s stopping", edge.edge_id))
