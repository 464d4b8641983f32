"""The webhook edge on a real broker, worker, sink and media node, driven by independent
peers: requests signed with the providers' own libraries, TwiML and NCCO parsed as
documents, streamdouble playing Twilio's media side, a local stand-in for Telnyx's API.
The media clients carry the queue id only as the answers name it: `callQueueId` (Twilio's
custom parameter, Telnyx's `client_state`, the Vonage header)."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import nacl.signing
import numpy as np
import pytest
import requests
from aiohttp import web
from confluent_kafka import Consumer, TopicPartition
from twilio.request_validator import RequestValidator

from edge.sip.uac import Call
from media.agents.greeting import GREETING
from tests.harness import ROOT, child_env, free_port, run_cli
from tests.stack import CONFIG, Stack, running_stack
from trunkline.core.topics import ADMISSION, ALL_TOPICS, CALL_EVENTS

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:12]
SECRETS = {  # known tokens: the test greps topics and logs for them
    "TL_TEST_TWILIO_TOKEN": f"KNOWN-twilio-token-{RUN}",
    "TL_TEST_TELNYX_KEY": f"KNOWN-telnyx-key-{RUN}",
    "TL_TEST_VONAGE_SECRET": f"KNOWN-vonage-signature-secret-{RUN}",
    "TL_TEST_VONAGE_ANSWER": f"KNOWN-vonage-answer-token-{RUN}",
}
TWILIO_SID = "AC" + "1" * 32
TELNYX_SIGNER = nacl.signing.SigningKey(b"\x11" * 32)
TELNYX_PUBLIC = base64.b64encode(bytes(TELNYX_SIGNER.verify_key)).decode()
NUMBERS = {"twilio": "+15550000004", "telnyx": "+15550000010", "vonage": "+15550000011"}
LIMITED_TWILIO = "+15550000012"


@dataclass
class TelnyxApi:
    """A stand-in for Telnyx's API: records every command it is sent."""

    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        ready = threading.Event()

        async def record(request: web.Request) -> web.Response:
            self.requests.append(
                {
                    "path": request.path,
                    "auth": request.headers.get("Authorization", ""),
                    "body": await request.json(),
                }
            )
            return web.json_response({"data": {"result": "ok"}})

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/{tail:.*}", record)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            ready.set()
            await asyncio.Event().wait()

        threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
        assert ready.wait(10)

    def commands(self, call_control_id: str, timeout: float = 15) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.requests if f"/v2/calls/{call_control_id}/" in r["path"]]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no command for {call_control_id}; got {self.requests}")


@dataclass
class Hooks:
    stack: Stack
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    telnyx: TelnyxApi
    media_url: str

    def twilio(self, path: str, params: dict[str, str], token: str | None = None, **kw: Any):
        url = f"{self.url}{path}"
        signature = RequestValidator(token or SECRETS["TL_TEST_TWILIO_TOKEN"]).compute_signature(
            url, params
        )
        headers = {"X-Twilio-Signature": signature, **kw.pop("headers", {})}
        return requests.post(url, data=params, headers=headers, timeout=20, **kw)

    def telnyx_event(self, body: bytes, at: float | None = None, key: Any = TELNYX_SIGNER):
        stamp = str(int(at if at is not None else time.time()))
        sig = base64.b64encode(key.sign(stamp.encode() + b"|" + body).signature).decode()
        return requests.post(
            f"{self.url}/webhooks/telnyx",
            data=body,
            headers={
                "Content-Type": "application/json",
                "telnyx-signature-ed25519": sig,
                "telnyx-timestamp": stamp,
            },
            timeout=20,
        )

    def vonage_event(
        self, doc: dict[str, Any], secret: str | None = None, iat: float | None = None
    ):
        body = json.dumps(doc).encode()
        token = jwt.encode(
            {
                "iat": int(iat if iat is not None else time.time()),
                "jti": uuid.uuid4().hex,
                "iss": "Vonage",
                "application_id": "app-test",
                "payload_hash": hashlib.sha256(body).hexdigest(),
            },
            secret or SECRETS["TL_TEST_VONAGE_SECRET"],
            algorithm="HS256",
        )
        return requests.post(
            f"{self.url}/webhooks/vonage/event",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            timeout=20,
        )

    def entry(self, call_id: str, status: str = "Completed", timeout: float = 30) -> dict:
        return self.stack.sink.poll(
            f"/calls/{call_id}/?events=1",
            lambda e: isinstance(e, dict) and e.get("status") == status,
            timeout=timeout,
        )

    def slots_free(self, business: str = "b-main") -> None:
        self.stack.worker.poll("/state/admission-active/", lambda a: a.get(business, []) == [])
        self.stack.worker.poll("/state/routing-held/", lambda h: h.get("backend-1", 0) == 0)


def _config(telnyx_api: str) -> dict[str, Any]:
    config = copy.deepcopy(CONFIG)
    config["providers"] = [
        {
            "id": "twilio-main",
            "kind": "Twilio",
            "accountSid": TWILIO_SID,
            "authToken": {"env": "TL_TEST_TWILIO_TOKEN"},
        },
        {
            "id": "telnyx-main",
            "kind": "Telnyx",
            "apiKey": {"env": "TL_TEST_TELNYX_KEY"},
            "publicKey": TELNYX_PUBLIC,
            "connectionId": "conn-test",
            "apiBaseUrl": telnyx_api,
        },
        {
            "id": "vonage-main",
            "kind": "Vonage",
            "applicationId": "app-test",
            "signatureSecret": {"env": "TL_TEST_VONAGE_SECRET"},
            "answerToken": {"env": "TL_TEST_VONAGE_ANSWER"},
        },
    ]
    for kind, number in (("Telnyx", NUMBERS["telnyx"]), ("Vonage", NUMBERS["vonage"])):
        config["numbers"].append(
            {
                "id": f"n-{kind.lower()}",
                "businessId": "b-main",
                "provider": kind,
                "number": number,
                "routeId": "r-main",
                "regionId": "us-east-1",
            }
        )
    config["numbers"].append(
        {
            "id": "n-tw-limit",
            "businessId": "b-limit",
            "provider": "Twilio",
            "providerAccountId": "twilio-main",
            "number": LIMITED_TWILIO,
            "routeId": "r-limit",
            "regionId": "us-east-1",
        }
    )
    return config


def start_webhook_edge(
    stack: Stack, extra_env: dict[str, str], name: str = "webhook-t", log_name: str = ""
) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = stack.settings.state_dir / f"{log_name or name}.log"
    env = {**child_env(stack.settings), **extra_env, "TRUNKLINE_PUBLIC_URL": url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trunkline.cli", "webhook-edge", "--edge-id", name,
         "--listen", f"127.0.0.1:{port}"],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,  # noqa: SIM115
    )  # fmt: skip
    return proc, url, log


@pytest.fixture(scope="module")
def hooks(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hooks]:
    api = TelnyxApi()
    api.start()
    with running_stack(
        kafka_bootstrap,
        tmp_path_factory.mktemp("webhook"),
        edges=("edge-a",),
        media=True,
        config=_config(api.url),
    ) as stack:
        proc, url, log = start_webhook_edge(stack, SECRETS)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if requests.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            media_url = next(
                b["mediaUrl"] for b in _media_backends(stack) if b["id"] == "backend-1"
            )
            yield Hooks(stack, url, proc, log, api, media_url)
        finally:
            proc.terminate()
            proc.wait(10)


def _media_backends(stack: Stack) -> list[dict[str, Any]]:
    import yaml

    return yaml.safe_load((stack.settings.state_dir / "config.yaml").read_text())["backends"]


# -- helpers ------------------------------------------------------------------------------
def greeting_8k() -> np.ndarray:
    import wave

    with wave.open(str(GREETING), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(float)
    return pcm[::2]


def assert_greeting(heard_8k: np.ndarray) -> None:
    clip = greeting_8k()
    assert len(heard_8k) >= len(clip), f"heard {len(heard_8k)} samples"
    window = heard_8k[: len(clip) + 1600]
    best = int(np.argmax(np.correlate(window, clip, mode="valid")))
    aligned = window[best : best + len(clip)]
    assert np.dot(aligned, clip) / (np.linalg.norm(aligned) * np.linalg.norm(clip)) > 0.9


def twiml_stream(body: bytes) -> tuple[str, dict[str, str]]:
    root = ET.fromstring(body)
    assert root.tag == "Response"
    stream = root.find("Connect/Stream")
    assert stream is not None, body
    return stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream}


def voice(sid: str, to: str = NUMBERS["twilio"]) -> dict[str, str]:
    return {
        "CallSid": sid, "AccountSid": TWILIO_SID, "From": "+15550001111", "To": to,
        "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01",
    }  # fmt: skip


def status(sid: str, call_status: str, seq: int, **extra: str) -> dict[str, str]:
    return {**voice(sid), "CallStatus": call_status, "SequenceNumber": str(seq), **extra}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url, timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def high_watermarks(stack: Stack, topics: list[str]) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": stack.settings.kafka_bootstrap, "group.id": "hw"})
    try:
        out = {}
        for topic in topics:
            for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
                out[(topic, p)] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        return out
    finally:
        c.close()


def published_by_webhook_edges(stack: Stack, since: dict[tuple[str, int], int]) -> list[str]:
    """Records written after `since` (from high_watermarks) by a webhook edge: the worker's
    ticks keep arriving on admission, so offsets alone cannot say nothing was published."""
    from schemas import SingleObjectCodec

    codec = SingleObjectCodec()
    until = high_watermarks(stack, sorted({t for t, _ in since}))
    c = Consumer(
        {"bootstrap.servers": stack.settings.kafka_bootstrap, "group.id": f"g-{uuid.uuid4()}"}
    )
    found = []
    try:
        parts = [TopicPartition(t, p, o) for (t, p), o in since.items() if until[(t, p)] > o]
        c.assign(parts)
        left = sum(until[(tp.topic, tp.partition)] - tp.offset for tp in parts)
        while left > 0:
            msg = c.poll(10)
            assert msg is not None, "records went missing"
            if msg.error():
                continue
            left -= 1
            name, record = codec.decode(msg.value())
            if record["envelope"]["producer_id"].startswith("webhook"):
                found.append(f"{name} {record['envelope']['call_id']}")
    finally:
        c.close()
    return found


def all_bytes(stack: Stack, topic: str) -> bytes:
    c = Consumer(
        {
            "bootstrap.servers": stack.settings.kafka_bootstrap,
            "group.id": f"grep-{uuid.uuid4().hex}",
            "enable.partition.eof": True,
        }
    )
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        parts = []
        for p in meta.partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                parts.append(TopicPartition(topic, p, low))
        c.assign(parts)
        data, done = bytearray(), 0
        while done < len(parts):
            msg = c.poll(5)
            if msg is None:
                break
            if msg.error():
                done += 1
                continue
            data += (msg.key() or b"") + (msg.value() or b"")
            for _, v in msg.headers() or []:
                data += v or b""
        return bytes(data)
    finally:
        c.close()


# -- Twilio ------------------------------------------------------------------------------
def test_twilio_call_end_to_end(hooks):
    """Voice webhook -> decision -> TwiML -> streamdouble (Twilio's side) connects to the
    Stream URL with the queue id from the TwiML -> hears the greeting -> status callbacks
    -> Completed in ClickHouse with the provider's fields, and the slots are free."""
    from streamdouble.api import call as simulated_call
    from streamdouble.session import SessionConfig

    from media.codecs import G711Codec

    sid = f"CA{uuid.uuid4().hex}"
    before = scrape(f"{hooks.url}/metrics")
    r = hooks.twilio("/webhooks/twilio/voice", voice(sid))
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/xml")
    url, params = twiml_stream(r.content)
    assert url == f"{hooks.media_url}/twilio"
    queue_id = params["callQueueId"]
    codec = G711Codec("PCMU")
    t = np.arange(8000 * 4) / 8000
    tone = (np.sin(2 * np.pi * 440 * t) * 6000).astype("<i2")
    frames = [codec.encode(tone[i * 160 : (i + 1) * 160].tobytes(), 8000)[0] for i in range(150)]
    report = asyncio.run(
        simulated_call(
            url,
            frames=frames,
            config=SessionConfig(
                custom_parameters={"callQueueId": queue_id},
                quiet_period_s=0.5,
                max_drain_s=2.0,
            ),
        )
    )
    assert report.violations == [] and report.spoke
    heard = np.frombuffer(codec.decode(report.audio_received, 0, 8000), dtype="<i2")
    assert_greeting(heard.astype(float))
    for seq, st in enumerate(("initiated", "ringing", "in-progress")):
        assert hooks.twilio("/webhooks/twilio/status", status(sid, st, seq)).status_code == 204
    done = status(sid, "completed", 3, CallDuration="5")
    assert hooks.twilio("/webhooks/twilio/status", done).status_code == 204
    entry = hooks.entry(queue_id)
    assert entry["provider"] == "TWILIO" and entry["providerCallId"] == sid
    assert entry["providerAccountId"] == "twilio-main"
    assert entry["hangupCause"] == "completed" and entry["providerDurationMs"] == 5000
    messages = [log["message"] for log in entry["logs"]]
    assert messages[0].startswith("Twilio webhook received by webhook-t (account twilio-main)")
    assert any(m.startswith("Call admitted") for m in messages)
    assert any(m.startswith("Call routed to backend-1") for m in messages)
    assert any(m.startswith("Call accepted by backend-1") for m in messages)  # stream connected
    assert "Twilio status ringing" in messages and "Twilio status initiated" in messages
    assert "Twilio status in-progress: call answered" in messages
    assert "Twilio status completed: call ended: completed after 5 s" in messages
    hooks.slots_free()
    # the edge's /metrics, through prometheus_client's parser: the voice webhook's 200
    # and its time to the answer, the four status callbacks' 204s, what was published
    after = scrape(f"{hooks.url}/metrics")

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    voice_route, status_route = "/webhooks/twilio/voice", "/webhooks/twilio/status"
    assert moved("trunkline_webhook_requests_total", route=voice_route) == 1
    assert moved("trunkline_webhook_responses_total", route=voice_route, code="200") == 1
    assert moved("trunkline_webhook_request_seconds_count", route=voice_route) == 1
    assert moved("trunkline_webhook_responses_total", route=status_route, code="204") == 4
    assert moved("trunkline_webhook_published_total", outcome="queued") >= 3


def test_a_retried_voice_webhook_gets_the_same_answer_and_one_admission(hooks):
    sid = f"CA{uuid.uuid4().hex}"

    def post(_: int) -> requests.Response:
        return hooks.twilio(
            "/webhooks/twilio/voice", voice(sid), headers={"I-Twilio-Idempotency-Token": sid}
        )

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        first = list(pool.map(post, range(2)))
    answers = [*first, post(2)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1  # byte-identical TwiML
    _, params = twiml_stream(answers[0].content)
    queue_id = params["callQueueId"]
    active = hooks.stack.worker.get("/state/admission-active/")
    assert active.get("b-main", []).count(queue_id) == 1
    entry = hooks.entry(queue_id, status="ProcessedProxy")
    kinds = [e["event_type"] for e in entry["events"]]
    assert kinds.count("CallAdmitted") == 1 and kinds.count("CallOffered") == 1
    # the provider ends it before any media connected: the slots are freed
    assert hooks.twilio("/webhooks/twilio/status", status(sid, "canceled", 1)).status_code == 204
    assert hooks.entry(queue_id, status="Cancelled")["hangupCause"] == "canceled"
    hooks.slots_free()


def test_a_plan_limit_reached_by_sip_refuses_the_twilio_call(hooks):
    uac = hooks.stack.uac()
    sip = Call("+15550000001")  # b-limit, plan "one": this call takes the only slot
    assert uac.invite(sip).status == 302
    sip_queue_id = sip.final.headers.get("x-callqueue-id")
    r = hooks.twilio("/webhooks/twilio/voice", voice(f"CA{uuid.uuid4().hex}", LIMITED_TWILIO))
    root = ET.fromstring(r.content)
    assert [(c.tag, c.attrib) for c in root] == [("Reject", {"reason": "busy"})]
    # release the SIP call (as its media node would): the next Twilio call gets in
    from tests.samples import sample

    ended = sample("CallEnded", call_id=sip_queue_id)
    ended["business_id"] = "b-limit"
    hooks.stack.publish(
        ADMISSION.name(hooks.stack.settings.topic_prefix), "b-limit", "CallEnded", ended
    )
    hooks.slots_free("b-limit")
    sid = f"CA{uuid.uuid4().hex}"
    ok = hooks.twilio("/webhooks/twilio/voice", voice(sid, LIMITED_TWILIO))
    _, params = twiml_stream(ok.content)
    assert hooks.twilio("/webhooks/twilio/status", status(sid, "completed", 1)).status_code == 204
    hooks.entry(params["callQueueId"])
    hooks.slots_free("b-limit")
    uac.close()


def test_a_number_not_configured_gets_twiml_reject_and_nothing_is_published(hooks):
    prefix = hooks.stack.settings.topic_prefix
    before = high_watermarks(hooks.stack, [ADMISSION.name(prefix), CALL_EVENTS.name(prefix)])
    r = hooks.twilio("/webhooks/twilio/voice", voice("CAnowhere", "+15559999999"))
    assert r.status_code == 200
    assert [(c.tag, c.attrib) for c in ET.fromstring(r.content)] == [
        ("Reject", {"reason": "rejected"})
    ]
    time.sleep(0.5)  # a publish would be on the broker within the edge's 1 ms linger
    assert published_by_webhook_edges(hooks.stack, before) == []
    # the check sees what an edge does publish: a configured number's offer
    sid = f"CA{uuid.uuid4().hex}"
    queue_id = twiml_stream(hooks.twilio("/webhooks/twilio/voice", voice(sid)).content)[1][
        "callQueueId"
    ]
    assert f"CallOffered {queue_id}" in published_by_webhook_edges(hooks.stack, before)
    assert hooks.twilio("/webhooks/twilio/status", status(sid, "canceled", 1)).status_code == 204
    hooks.slots_free()


# -- Telnyx ------------------------------------------------------------------------------
def telnyx_doc(kind: str, event_id: str, ccid: str, **payload: Any) -> bytes:
    return json.dumps(
        {
            "data": {
                "record_type": "event", "event_type": kind, "id": event_id,
                "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
                "payload": {
                    "call_control_id": ccid, "connection_id": "conn-test", "direction": "incoming",
                    "from": "+15550001111", "to": NUMBERS["telnyx"], **payload,
                },
            }
        }
    ).encode()  # fmt: skip


async def telnyx_media(url: str, client_state: str) -> bytes:
    """Telnyx's media side: start (with the client_state the answer set), then inbound
    PCMU frames paced at 20 ms; returns what it heard (16 kHz PCM)."""
    from media.codecs import G711Codec

    ulaw = G711Codec("PCMU")
    heard = bytearray()
    silence = base64.b64encode(b"\xff" * 160).decode()
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_str(json.dumps({"event": "connected", "version": "1.0.0"}))
        start = {
            "event": "start", "sequence_number": "1", "stream_id": "S1",
            "start": {
                "call_control_id": "v3:x", "client_state": client_state,
                "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
            },
        }  # fmt: skip
        await ws.send_str(json.dumps(start))

        async def receive() -> None:
            async for msg in ws:
                data = json.loads(msg.data)
                if data["event"] == "media":
                    heard.extend(ulaw.decode(base64.b64decode(data["media"]["payload"]), 0, 16000))

        rx = asyncio.create_task(receive())
        for i in range(175):
            frame = {
                "event": "media", "sequence_number": str(i + 2), "stream_id": "S1",
                "media": {"track": "inbound", "chunk": str(i + 1), "timestamp": str(i * 20),
                          "payload": silence},
            }  # fmt: skip
            await ws.send_str(json.dumps(frame))
            await asyncio.sleep(0.02)
        await ws.send_str(json.dumps({"event": "stop", "stream_id": "S1", "stop": {}}))
        await asyncio.wait_for(rx, 5)
    return bytes(heard)


def test_telnyx_call_end_to_end(hooks):
    ccid = f"v3:{uuid.uuid4().hex}"
    event_id = str(uuid.uuid4())
    r = hooks.telnyx_event(telnyx_doc("call.initiated", event_id, ccid))
    assert r.status_code == 200
    (answer,) = hooks.telnyx.commands(ccid)
    assert answer["path"] == f"/v2/calls/{ccid}/actions/answer"
    assert answer["auth"] == f"Bearer {SECRETS['TL_TEST_TELNYX_KEY']}"
    body = answer["body"]
    assert body["stream_url"] == f"{hooks.media_url}/telnyx"
    assert body["stream_track"] == "both_tracks" and body["stream_bidirectional_mode"] == "rtp"
    queue_id = json.loads(base64.b64decode(body["client_state"]))["callQueueId"]
    assert body["command_id"]
    # the same webhook again: the same command (same command_id), no second admission
    assert hooks.telnyx_event(telnyx_doc("call.initiated", event_id, ccid)).status_code == 200
    deadline = time.monotonic() + 10
    while len(hooks.telnyx.commands(ccid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    again = hooks.telnyx.commands(ccid)
    assert len(again) == 2 and again[1]["body"] == body
    heard = asyncio.run(telnyx_media(body["stream_url"], body["client_state"]))
    assert_greeting(np.frombuffer(heard, dtype="<i2").astype(float)[::2])
    answered = telnyx_doc("call.answered", str(uuid.uuid4()), ccid)
    assert hooks.telnyx_event(answered).status_code == 200
    hangup = telnyx_doc(
        "call.hangup", str(uuid.uuid4()), ccid,
        hangup_cause="normal_clearing", hangup_source="caller",
        start_time=time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - 4)),
        call_quality_stats={"inbound": {"mos": "4.42", "packet_count": "175"}},
    )  # fmt: skip
    assert hooks.telnyx_event(hangup).status_code == 200
    entry = hooks.entry(queue_id)
    assert entry["provider"] == "TELNYX" and entry["providerCallId"] == ccid
    assert entry["hangupCause"] == "normal_clearing"
    assert entry["media"]["mos"] == pytest.approx(4.42, abs=0.01)
    assert entry["providerDurationMs"] >= 3000
    kinds = [e["event_type"] for e in entry["events"]]
    assert kinds.count("CallAdmitted") == 1
    hooks.slots_free()


# -- Vonage ------------------------------------------------------------------------------
async def vonage_media(uri: str, headers: dict[str, str]) -> bytes:
    heard = bytearray()
    async with aiohttp.ClientSession() as http, http.ws_connect(uri) as ws:
        first = {"event": "websocket:connected", "content-type": "audio/l16;rate=16000"}
        await ws.send_str(json.dumps({**first, **headers}))

        async def receive() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    heard.extend(msg.data)

        rx = asyncio.create_task(receive())
        for _ in range(175):
            await ws.send_bytes(b"\x00" * 640)
            await asyncio.sleep(0.02)
        await ws.close()
        await asyncio.wait_for(rx, 5)
    return bytes(heard)


def test_vonage_call_end_to_end(hooks):
    call_uuid = str(uuid.uuid4())
    token = SECRETS["TL_TEST_VONAGE_ANSWER"]
    r = requests.get(
        f"{hooks.url}/webhooks/vonage/answer",
        params={
            "account": "vonage-main", "token": token, "uuid": call_uuid,
            "conversation_uuid": "CON-1", "to": NUMBERS["vonage"].lstrip("+"),
            "from": "15550001111",
        },
        timeout=20,
    )  # fmt: skip
    assert r.status_code == 200
    (connect,) = r.json()
    assert connect["action"] == "connect"
    (endpoint,) = connect["endpoint"]
    assert endpoint["type"] == "websocket" and endpoint["content-type"] == "audio/l16;rate=16000"
    assert endpoint["uri"] == f"{hooks.media_url}/vonage"
    queue_id = endpoint["headers"]["callQueueId"]
    heard = asyncio.run(vonage_media(endpoint["uri"], endpoint["headers"]))
    assert_greeting(np.frombuffer(heard, dtype="<i2").astype(float)[::2])
    for st in ("answered", "completed"):
        doc = {"uuid": call_uuid, "status": st, "to": NUMBERS["vonage"].lstrip("+"),
               "from": "15550001111", "direction": "inbound", "duration": "4"}  # fmt: skip
        assert hooks.vonage_event(doc).status_code == 204
    entry = hooks.entry(queue_id)
    assert entry["provider"] == "VONAGE" and entry["providerCallId"] == call_uuid
    assert entry["providerDurationMs"] == 4000
    hooks.slots_free()


# -- refusals ----------------------------------------------------------------------------
def test_forged_stale_and_bad_requests_get_4xx_and_publish_nothing(hooks):
    s = hooks.stack
    topics = [ADMISSION.name(s.settings.topic_prefix), CALL_EVENTS.name(s.settings.topic_prefix)]
    before = high_watermarks(s, topics)
    sid = f"CA{uuid.uuid4().hex}"
    url = f"{hooks.url}/webhooks/twilio/voice"
    tampered = voice(sid)
    signed = RequestValidator(SECRETS["TL_TEST_TWILIO_TOKEN"]).compute_signature(url, tampered)
    tampered["To"] = NUMBERS["telnyx"]
    ccid = f"v3:{uuid.uuid4().hex}"
    doc = telnyx_doc("call.initiated", str(uuid.uuid4()), ccid)
    other_key = nacl.signing.SigningKey(b"\x22" * 32)
    vdoc = {"uuid": str(uuid.uuid4()), "status": "completed", "to": NUMBERS["vonage"][1:]}
    cases = {
        "twilio wrong key": hooks.twilio("/webhooks/twilio/voice", voice(sid), token="x" * 32),
        "twilio altered parameter": requests.post(
            url, data=tampered, headers={"X-Twilio-Signature": signed}, timeout=10
        ),
        "twilio unsigned": requests.post(url, data=voice(sid), timeout=10),
        "twilio unknown account": hooks.twilio(
            "/webhooks/twilio/voice", {**voice(sid), "AccountSid": "AC" + "9" * 32}
        ),
        "twilio malformed form": requests.post(
            url, data=b"a=%zz&&", timeout=10,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        "twilio wrong content type": requests.post(
            url, data=b"<x/>", headers={"Content-Type": "text/xml"}, timeout=10
        ),
        "twilio body over 64 KiB": hooks.twilio(
            "/webhooks/twilio/voice", {**voice(sid), "Pad": "x" * 70_000}
        ),
        "telnyx wrong key": hooks.telnyx_event(doc, key=other_key),
        "telnyx stale": hooks.telnyx_event(doc, at=time.time() - 301),
        "telnyx malformed json": requests.post(
            f"{hooks.url}/webhooks/telnyx", data=b"{", timeout=10,
            headers={"Content-Type": "application/json"},
        ),
        "vonage wrong secret": hooks.vonage_event(vdoc, secret="wrong-secret-" + "0" * 20),
        "vonage stale": hooks.vonage_event(vdoc, iat=time.time() - 400),
        "vonage answer wrong token": requests.get(
            f"{hooks.url}/webhooks/vonage/answer",
            params={"token": "nope", "uuid": "u", "to": NUMBERS["vonage"][1:]}, timeout=10,
        ),
        "vonage answer unknown number": requests.get(
            f"{hooks.url}/webhooks/vonage/answer",
            params={"token": SECRETS["TL_TEST_VONAGE_ANSWER"], "uuid": "u", "to": "15559999999"},
            timeout=10,
        ),
    }  # fmt: skip
    expected = {
        "twilio malformed form": 400, "twilio wrong content type": 415,
        "twilio body over 64 KiB": 413, "telnyx malformed json": 400,
        "vonage answer unknown number": 404,
    }  # fmt: skip
    got = {name: r.status_code for name, r in cases.items()}
    assert got == {name: expected.get(name, 403) for name in cases}
    for name, r in cases.items():
        assert r.json()["error"], name  # a short reason
    assert hooks.telnyx.requests == [] or all(ccid not in q["path"] for q in hooks.telnyx.requests)
    time.sleep(0.5)  # a publish would be on the broker within the edge's 1 ms linger
    assert published_by_webhook_edges(s, before) == []
    metrics = requests.get(f"{hooks.url}/metrics", timeout=10).text
    assert 'trunkline_webhook_refused_total{provider="twilio",reason="bad_signature"}' in metrics
    assert 'reason="stale_signature"' in metrics


def test_no_secret_reaches_a_topic_a_log_or_config_show(hooks):
    s = hooks.stack
    prefix = s.settings.topic_prefix
    shown = run_cli(s.settings, "config", "show")
    assert shown.returncode == 0, shown.stderr
    assert "env:TL_TEST_TWILIO_TOKEN" in shown.stdout
    texts = {"config show": shown.stdout.encode()}
    for spec in ALL_TOPICS:
        texts[spec.name(prefix)] = all_bytes(s, spec.name(prefix))
    for path in s.settings.state_dir.glob("*.log"):
        texts[path.name] = path.read_bytes()
    assert texts[CALL_EVENTS.name(prefix)]  # the grep looks at real traffic
    for name, data in texts.items():
        for secret in SECRETS.values():
            assert secret.encode() not in data, f"{secret} found in {name}"


def test_the_edge_refuses_to_start_without_a_secret(hooks):
    env = {k: v for k, v in SECRETS.items() if k != "TL_TEST_VONAGE_SECRET"}
    proc, _, log = start_webhook_edge(hooks.stack, env, name="webhook-nosecret")
    assert proc.wait(60) == 2
    text = log.read_text()
    assert "environment variable TL_TEST_VONAGE_SECRET is not set" in text
    assert "account vonage-main" in text


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def test_a_retry_on_another_edge_sharing_the_edge_id_gets_the_same_answer(hooks):
    """Two edges behind one public URL share one edge id: the retry that lands on the
    second edge gets admission's replayed decision, and the call stays admitted once."""
    proc, url, log = start_webhook_edge(hooks.stack, SECRETS, "webhook-t", "webhook-t-second")
    try:
        _wait_healthy(proc, url, log)
        sid = f"CA{uuid.uuid4().hex}"
        first = hooks.twilio("/webhooks/twilio/voice", voice(sid))
        path = "/webhooks/twilio/voice"
        params = voice(sid)
        signature = RequestValidator(SECRETS["TL_TEST_TWILIO_TOKEN"]).compute_signature(
            f"{url}{path}", params
        )
        second = requests.post(
            f"{url}{path}", data=params, headers={"X-Twilio-Signature": signature}, timeout=20
        )
        assert second.status_code == 200 and second.content == first.content
        queue_id = twiml_stream(first.content)[1]["callQueueId"]
        active = hooks.stack.worker.get("/state/admission-active/")
        assert active.get("b-main", []).count(queue_id) == 1
        assert (
            hooks.twilio("/webhooks/twilio/status", status(sid, "canceled", 1)).status_code == 204
        )
        hooks.slots_free()
    finally:
        proc.terminate()
        proc.wait(10)


def test_vonage_answer_by_post_json(hooks):
    call_uuid = str(uuid.uuid4())
    r = requests.post(
        f"{hooks.url}/webhooks/vonage/answer",
        params={"token": SECRETS["TL_TEST_VONAGE_ANSWER"]},
        json={"uuid": call_uuid, "to": NUMBERS["vonage"].lstrip("+"), "from": "15550001111"},
        timeout=20,
    )
    assert r.status_code == 200
    (connect,) = r.json()
    queue_id = connect["endpoint"][0]["headers"]["callQueueId"]
    doc = {"uuid": call_uuid, "status": "timeout", "to": NUMBERS["vonage"].lstrip("+")}
    assert hooks.vonage_event(doc).status_code == 204
    entry = hooks.entry(queue_id, status="Failed")
    assert entry["reason"] == "no_answer" and entry["hangupCause"] == "timeout"
    hooks.slots_free()
