"""Outbound calls (POST /v1/calls) on a real broker, worker, sink and media node, against
independent stand-ins: Twilio's REST API mocked by Prism from Twilio's own OpenAPI
description (the SDK's request must match Twilio's spec), Telnyx and Vonage through
their official SDKs against recording stand-ins, Twilio's side of the call played by the
test (signed status callbacks, streamdouble on the TwiML's stream URL)."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import numpy as np
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twilio.request_validator import RequestValidator

from edge.dialer.machine import request_id
from tests.harness import ROOT, child_env, free_port
from tests.integration.test_webhook import (
    SECRETS,
    TELNYX_PUBLIC,
    TELNYX_SIGNER,
    assert_greeting,
    high_watermarks,
    published_by_webhook_edges,
    start_webhook_edge,
)
from tests.outbound_stand_ins import Prism, Recorder, fixed, forward_to, telnyx_api, vonage_api
from tests.stack import CONFIG, Stack, running_stack
from trunkline.core.topics import ADMISSION, CALL_EVENTS, OUTBOUND

pytestmark = pytest.mark.integration

KEY_MAIN = f"tl-key-main-{uuid.uuid4().hex}"
HELD_TO = "+4915100000001"  # the Telnyx stand-in leaves its first dial unanswered
TELNYX_HOLD = {HELD_TO}
KEY_LIMIT = f"tl-key-limit-{uuid.uuid4().hex}"
TO = "+4915112345678"
SIDS = {
    name: "AC" + digit * 32
    for name, digit in (("twilio-main", "a"), ("twilio-down", "b"), ("twilio-503", "c"),
                        ("twilio-bad", "d"))
}  # fmt: skip


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Outbound:
    stack: Stack
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    twilio: Recorder  # in front of Prism
    twilio_503: Recorder
    twilio_bad: Recorder
    telnyx: Recorder
    vonage: Recorder
    media_url: str
    vonage_public_pem: bytes

    def post(self, body: dict[str, Any], key: str | None = KEY_MAIN, **headers: str):
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return requests.post(f"{self.url}/v1/calls", json=body, headers=headers, timeout=60)

    def get(self, call_id: str, key: str = KEY_MAIN):
        return requests.get(
            f"{self.url}/v1/calls/{call_id}", headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )  # fmt: skip

    def entry(self, call_id: str, status: str, timeout: float = 30) -> dict:
        return self.stack.sink.poll(
            f"/calls/{call_id}/", lambda e: isinstance(e, dict) and e.get("status") == status,
            timeout=timeout,
        )  # fmt: skip

    def held(self) -> int:
        return int(self.stack.worker.get("/state/routing-held/").get("backend-1", 0))

    def slots_free(self, call_ids: list[str], held_before: int, business: str = "b-main") -> None:
        """The calls hold no plan slot, and backend-1 holds no more than before them (other
        tests' calls may still be live)."""
        self.stack.worker.poll(
            "/state/admission-active/",
            lambda a: not set(call_ids) & set(a.get(business, [])),
        )
        self.stack.worker.poll(
            "/state/routing-held/", lambda h: h.get("backend-1", 0) <= held_before
        )

    def end_telnyx(self, call: dict[str, Any], attempt: int) -> None:
        """Telnyx reports the call's end (normal clearing): it ends, its slots are freed."""
        state = _telnyx_dial_for(self, call["id"], attempt, repeats=True)["body"]["client_state"]
        hangup = {"data": {"event_type": "call.hangup", "id": str(uuid.uuid4()),
                           "occurred_at": "2026-11-30T18:00:00Z",
                           "payload": {"call_control_id": call["providerCallId"],
                                       "connection_id": "conn-test", "client_state": state,
                                       "hangup_cause": "normal_clearing", "to": TO}}}  # fmt: skip
        assert self.telnyx_event(hangup).status_code == 200
        self.entry(call["id"], "Completed")  # its end is written everywhere by now

    def twilio_status(self, callback: str, params: dict[str, str]) -> requests.Response:
        signature = RequestValidator(SECRETS["TL_TEST_TWILIO_TOKEN"]).compute_signature(
            callback, params
        )
        return requests.post(callback, data=params, headers={"X-Twilio-Signature": signature},
                             timeout=10)  # fmt: skip

    def telnyx_event(self, doc: dict[str, Any]) -> requests.Response:
        body = json.dumps(doc).encode()
        stamp = str(int(time.time()))
        sig = base64.b64encode(TELNYX_SIGNER.sign(stamp.encode() + b"|" + body).signature)
        return requests.post(
            f"{self.url}/webhooks/telnyx", data=body, timeout=10,
            headers={"Content-Type": "application/json", "telnyx-signature-ed25519": sig.decode(),
                     "telnyx-timestamp": stamp},
        )  # fmt: skip


def _config(o: dict[str, str], vonage_key: Path) -> dict[str, Any]:
    config = copy.deepcopy(CONFIG)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    twilio = {"kind": "Twilio", "authToken": {"env": "TL_TEST_TWILIO_TOKEN"}}
    telnyx = {"kind": "Telnyx", "apiKey": {"env": "TL_TEST_TELNYX_KEY"},
              "publicKey": TELNYX_PUBLIC, "connectionId": "conn-test"}  # fmt: skip
    vonage = {"kind": "Vonage", "applicationId": "app-test",
              "signatureSecret": {"env": "TL_TEST_VONAGE_SECRET"},
              "answerToken": {"env": "TL_TEST_VONAGE_ANSWER"},
              "privateKey": {"file": str(vonage_key)}}  # fmt: skip
    config["providers"] = [
        {"id": "twilio-main", **twilio, "accountSid": SIDS["twilio-main"], "apiBaseUrl": o["tw"]},
        {"id": "twilio-down", **twilio, "accountSid": SIDS["twilio-down"], "apiBaseUrl": closed},
        {"id": "twilio-503", **twilio, "accountSid": SIDS["twilio-503"], "apiBaseUrl": o["503"]},
        {"id": "twilio-bad", **twilio, "accountSid": SIDS["twilio-bad"], "apiBaseUrl": o["bad"]},
        {"id": "telnyx-main", **telnyx, "apiBaseUrl": o["telnyx"]},
        {"id": "telnyx-down", **telnyx, "connectionId": "conn-down", "apiBaseUrl": closed},
        {"id": "vonage-main", **vonage, "apiBaseUrl": o["vonage"]},
        {"id": "vonage-down", **vonage, "applicationId": "app-down", "apiBaseUrl": closed},
    ]  # fmt: skip
    for n in config["numbers"]:
        if n["id"] == "n-tw":
            n["providerAccountId"] = "twilio-main"
    for i, (kind, account) in enumerate(
        [("Twilio", "twilio-down"), ("Twilio", "twilio-503"), ("Twilio", "twilio-bad"),
         ("Telnyx", "telnyx-main"), ("Telnyx", "telnyx-down"), ("Vonage", "vonage-main"),
         ("Vonage", "vonage-down")]
    ):  # fmt: skip
        config["numbers"].append(
            {"id": f"n-{account}", "businessId": "b-main", "provider": kind,
             "providerAccountId": account, "number": f"+155500001{i:02d}", "routeId": "r-main",
             "regionId": "us-east-1"}
        )  # fmt: skip
    config["numbers"].append(
        {"id": "n-tw-limit", "businessId": "b-limit", "provider": "Twilio",
         "providerAccountId": "twilio-main", "number": "+15550000012", "routeId": "r-limit",
         "regionId": "us-east-1"}
    )  # fmt: skip
    for b in config["businesses"]:
        if b["id"] == "b-main":
            b["outboundProviders"] = ["twilio-main", "telnyx-main", "vonage-main"]
    config["apiKeys"] = [
        {"id": "k-main", "businessId": "b-main", "sha256": _sha(KEY_MAIN)},
        {"id": "k-limit", "businessId": "b-limit", "sha256": _sha(KEY_LIMIT)},
    ]
    return config


@pytest.fixture(scope="module")
def outbound(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outbound]:
    work = tmp_path_factory.mktemp("outbound")
    prism = Prism(work)
    twilio = Recorder(forward_to(prism.url)).start()
    twilio_503 = Recorder(fixed(503, {"code": 20503, "message": "Service Unavailable",
                                      "status": 503})).start()  # fmt: skip
    twilio_bad = Recorder(fixed(400, {"code": 21211, "message": "Invalid 'To' Phone Number",
                                      "more_info": "https://www.twilio.com/docs/errors/21211",
                                      "status": 400})).start()  # fmt: skip
    telnyx = Recorder(telnyx_api(TELNYX_HOLD)).start()
    vonage = Recorder(vonage_api()).start()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = work / "vonage.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))  # fmt: skip
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    urls = {"tw": twilio.url, "503": twilio_503.url, "bad": twilio_bad.url,
            "telnyx": telnyx.url, "vonage": vonage.url}  # fmt: skip
    try:
        with running_stack(
            kafka_bootstrap, work / "stack", edges=("edge-a",), media=True,
            config=_config(urls, pem),
        ) as stack:  # fmt: skip
            proc, url, log = start_webhook_edge(stack, SECRETS, name="webhook-o")
            try:
                wait_healthy(proc, url, log)
                import yaml

                backends = yaml.safe_load((stack.settings.state_dir / "config.yaml").read_text())
                media_url = next(b["mediaUrl"] for b in backends["backends"]
                                 if b["id"] == "backend-1")  # fmt: skip
                yield Outbound(stack, url, proc, log, twilio, twilio_503, twilio_bad, telnyx,
                               vonage, media_url, public)  # fmt: skip
            finally:
                for p in (proc, *_edge):
                    if p.poll() is None:
                        p.terminate()
                        p.wait(10)
    finally:
        prism.stop()


_edge: list[subprocess.Popen[bytes]] = []  # the edge restarted by the crash test


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or too busy to answer
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def _twiml(recorded: dict[str, Any]) -> tuple[str, dict[str, str]]:
    form = dict(recorded["body"])
    root = ET.fromstring(form["Twiml"])
    stream = root.find("Connect/Stream")
    assert stream is not None, form["Twiml"]
    return stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream}


def _logs(entry: dict) -> str:
    return "\n".join(str(line) for line in entry.get("logs", []))


# -- Twilio through Prism, end to end -------------------------------------------------------
def test_twilio_outbound_call_end_to_end(outbound: Outbound):
    """POST /v1/calls -> admission, routing -> the Twilio SDK's request, which Prism checks
    against Twilio's spec and answers 201 -> the test plays Twilio: signed status
    callbacks, streamdouble on the TwiML's stream URL hears the greeting -> completed ->
    Completed in ClickHouse, the attempt in its logs, the slots free."""
    from streamdouble.api import call as simulated_call
    from streamdouble.session import SessionConfig

    from media.codecs import G711Codec

    before, held = len(outbound.twilio.posts("Calls.json")), outbound.held()
    r = outbound.post({"to": TO, "fromNumberId": "n-tw", "providers": ["twilio-main"],
                       "metadata": {"crm": "42"}})  # fmt: skip
    assert r.status_code == 201, r.text
    call = r.json()
    assert (call["provider"], call["providerKind"], call["backend"]) == (
        "twilio-main", "twilio", "backend-1"
    )  # fmt: skip
    sent = outbound.twilio.posts("Calls.json")[before:]
    assert len(sent) == 1 and sent[0]["answer"] == 201  # Prism took it: it matches the spec
    form = sent[0]["body"]
    assert sent[0]["path"] == f"/2010-04-01/Accounts/{SIDS['twilio-main']}/Calls.json"
    assert dict(form)["To"] == TO and dict(form)["From"] == "+15550000004"
    assert [v for k, v in form if k == "StatusCallbackEvent"] == [
        "initiated", "ringing", "answered", "completed"
    ]  # fmt: skip
    url, params = _twiml(sent[0])
    assert url == f"{outbound.media_url}/twilio" and params == {"callQueueId": call["id"]}
    callback = dict(form)["StatusCallback"]
    assert urlsplit(callback).path == "/webhooks/twilio/status"
    assert parse_qs(urlsplit(callback).query)["callQueueId"] == [call["id"]]
    sid = call["providerCallId"]  # Prism's example CallSid

    def status(st: str, seq: int, **extra: str) -> dict[str, str]:
        return {"CallSid": sid, "AccountSid": SIDS["twilio-main"], "From": "+15550000004",
                "To": TO, "CallStatus": st, "Direction": "outbound-api",
                "ApiVersion": "2010-04-01", "SequenceNumber": str(seq), **extra}  # fmt: skip

    for seq, st in enumerate(("initiated", "ringing")):
        assert outbound.twilio_status(callback, status(st, seq)).status_code == 204
    codec = G711Codec("PCMU")
    tone = (np.sin(2 * np.pi * 440 * np.arange(8000 * 4) / 8000) * 6000).astype("<i2")
    frames = [codec.encode(tone[i * 160 : (i + 1) * 160].tobytes(), 8000)[0] for i in range(150)]
    assert outbound.twilio_status(callback, status("in-progress", 2)).status_code == 204
    report = asyncio.run(
        simulated_call(
            url, frames=frames,
            config=SessionConfig(custom_parameters=params, quiet_period_s=0.5, max_drain_s=2.0),
        )
    )  # fmt: skip
    assert report.violations == [] and report.spoke
    heard = np.frombuffer(codec.decode(report.audio_received, 0, 8000), dtype="<i2")
    assert_greeting(heard.astype(float))
    done = status("completed", 3, CallDuration="5")
    assert outbound.twilio_status(callback, done).status_code == 204
    entry = outbound.entry(call["id"], "Completed")
    logs = _logs(entry)
    assert "Outbound call requested" in logs
    assert f"Attempt 1 through twilio-main (Twilio): call {sid} created" in logs
    assert "Call accepted by backend-1" in logs
    outbound.slots_free([call["id"]], held)
    shown = outbound.get(call["id"])
    assert shown.status_code == 200 and shown.json()["status"] == "Completed"
    assert shown.json()["attempts"][0]["outcome"] == "placed"


# -- failover ---------------------------------------------------------------------------------
def _telnyx_dial_for(
    outbound: Outbound, call_id: str, attempt: int, repeats: bool = False
) -> dict[str, Any]:
    """The attempt's dial request: exactly one, unless `repeats` (a restarted dialer may
    repeat it with the same command_id, which Telnyx drops: still one call)."""
    wanted = request_id(call_id, attempt)
    dials = [r for r in outbound.telnyx.posts("/v2/calls") if r["body"]["command_id"] == wanted]
    assert dials and (repeats or len(dials) == 1), outbound.telnyx.requests
    return dials[0]


def test_twilio_at_a_closed_port_fails_over_to_telnyx(outbound: Outbound):
    held = outbound.held()
    r = outbound.post({"to": TO, "fromNumberId": "n-twilio-down",
                       "providers": ["twilio-down", "telnyx-main"]})  # fmt: skip
    assert r.status_code == 201, r.text
    call = r.json()
    assert call["provider"] == "telnyx-main"
    assert [a["outcome"] for a in call["attempts"]] == ["failed", "placed"]
    assert call["attempts"][0]["reason"] == "connect_error"
    dial = _telnyx_dial_for(outbound, call["id"], 1)
    body = dial["body"]
    assert dial["headers"]["Authorization"] == f"Bearer {SECRETS['TL_TEST_TELNYX_KEY']}"
    assert body["connection_id"] == "conn-test" and body["to"] == TO
    assert body["from"] == "+15550000103"  # the business's number on telnyx-main
    assert body["stream_url"] == f"{outbound.media_url}/telnyx"
    assert body["webhook_url"] == f"{outbound.url}/webhooks/telnyx"
    state = json.loads(base64.b64decode(body["client_state"]))
    assert state == {"callQueueId": call["id"], "attempt": "1", "dialer": "webhook-o"}
    outbound.end_telnyx(call, 1)
    entry = outbound.entry(call["id"], "Completed")
    assert "Attempt 1 through twilio-down (Twilio) failed: connect_error" in _logs(entry)
    assert "Attempt 2 through telnyx-main (Telnyx): call v3:" in _logs(entry)
    outbound.slots_free([call["id"]], held)


def test_twilio_503_fails_over_to_telnyx(outbound: Outbound):
    before, held = len(outbound.twilio_503.requests), outbound.held()
    r = outbound.post({"to": TO, "fromNumberId": "n-twilio-503",
                       "providers": ["twilio-503", "telnyx-main"]})  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["provider"] == "telnyx-main"
    assert len(outbound.twilio_503.requests) == before + 1
    assert r.json()["attempts"][0]["httpStatus"] == 503
    _telnyx_dial_for(outbound, r.json()["id"], 1)
    outbound.end_telnyx(r.json(), 1)
    outbound.slots_free([r.json()["id"]], held)


def test_invalid_number_fails_without_failover(outbound: Outbound):
    telnyx_before, held = len(outbound.telnyx.posts("/v2/calls")), outbound.held()
    r = outbound.post({"to": TO, "fromNumberId": "n-twilio-bad",
                       "providers": ["twilio-bad", "telnyx-main"]})  # fmt: skip
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["field"] == "to" and body["code"] == "21211"
    assert len(outbound.telnyx.posts("/v2/calls")) == telnyx_before  # no failover
    entry = outbound.entry(body["id"], "Failed")
    assert "code 21211" in _logs(entry) and "no failover" in _logs(entry)
    outbound.slots_free([body["id"]], held)


def test_every_provider_down_fails_with_every_attempt_logged(outbound: Outbound):
    held = outbound.held()
    r = outbound.post({"to": TO, "fromNumberId": "n-twilio-down",
                       "providers": ["twilio-down", "telnyx-down", "vonage-down"]})  # fmt: skip
    assert r.status_code == 503, r.text
    assert r.headers.get("Retry-After") == "5"
    call_id = r.json()["id"]
    entry = outbound.entry(call_id, "Failed")
    logs = _logs(entry)
    for n, account in enumerate(("twilio-down", "telnyx-down", "vonage-down"), start=1):
        assert f"Attempt {n} through {account}" in logs and "connect_error" in logs
    assert logs.count("Call ended") == 1
    outbound.slots_free([call_id], held)


def test_telnyx_failure_after_ringing_fails_over_to_vonage(outbound: Outbound):
    """An asynchronous failure with an infrastructure cause (SIP 503) before any answer:
    the next provider (Vonage, through its SDK) gets the call; the Vonage request body is
    the NCCO to the media node, signed with the account's private key."""
    before = len(outbound.vonage.posts("/v1/calls"))
    r = outbound.post({"to": TO, "fromNumberId": "n-telnyx-main",
                       "providers": ["telnyx-main", "vonage-main"]})  # fmt: skip
    assert r.status_code == 201 and r.json()["provider"] == "telnyx-main", r.text
    call = r.json()
    state = _telnyx_dial_for(outbound, call["id"], 0)["body"]["client_state"]
    hangup = {"data": {"event_type": "call.hangup", "id": str(uuid.uuid4()),
                       "occurred_at": "2026-11-30T18:00:00Z",
                       "payload": {"call_control_id": call["providerCallId"],
                                   "connection_id": "conn-test", "client_state": state,
                                   "hangup_cause": "unspecified", "sip_hangup_cause": "503",
                                   "from": "+15550000103", "to": TO}}}  # fmt: skip
    assert outbound.telnyx_event(hangup).status_code == 200
    deadline = time.monotonic() + 20
    while len(outbound.vonage.posts("/v1/calls")) == before:
        assert time.monotonic() < deadline, "Vonage never got the call"
        time.sleep(0.05)
    sent = outbound.vonage.posts("/v1/calls")[-1]
    body = sent["body"]
    assert body["to"] == [{"type": "phone", "number": TO.lstrip("+")}]
    assert body["from"] == {"type": "phone", "number": "15550000105"}
    endpoint = body["ncco"][0]["endpoint"][0]
    assert endpoint["uri"] == f"{outbound.media_url}/vonage"
    assert endpoint["content-type"] == "audio/l16;rate=16000"
    assert endpoint["headers"] == {"callQueueId": call["id"]}
    event_url = urlsplit(body["event_url"][0])
    assert event_url.path == "/webhooks/vonage/event"
    assert parse_qs(event_url.query)["attempt"] == ["1"]
    token = sent["headers"]["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, outbound.vonage_public_pem, algorithms=["RS256"])
    assert claims["application_id"] == "app-test"
    shown = outbound.get(call["id"]).json()
    assert [a["outcome"] for a in shown["attempts"]] == ["placed", "failed", "placed"]
    assert shown["attempts"][1]["errorCode"] == "503"


# -- idempotency, auth, bad input, limits ------------------------------------------------
def test_idempotency_key_gives_one_call_and_409_for_another_body(outbound: Outbound):
    key = f"order-{uuid.uuid4().hex}"
    body = {"to": TO, "fromNumberId": "n-telnyx-main", "providers": ["telnyx-main"]}
    first = outbound.post(body, **{"Idempotency-Key": key})
    second = outbound.post(body, **{"Idempotency-Key": key})
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert first.json()["id"] == second.json()["id"]
    _telnyx_dial_for(outbound, first.json()["id"], 0)  # exactly one provider request
    # the first call's records are all written (its attempt is in the history) before
    # the offsets are taken
    outbound.stack.sink.poll(
        f"/calls/{first.json()['id']}/", lambda e: "Attempt 1 through" in _logs(e or {})
    )
    topics = [t.name(outbound.stack.settings.topic_prefix) for t in (ADMISSION, OUTBOUND)]
    since = high_watermarks(outbound.stack, topics)
    other = outbound.post({**body, "to": "+4915199999999"}, **{"Idempotency-Key": key})
    assert other.status_code == 409 and other.json()["field"] == "Idempotency-Key"
    assert published_by_webhook_edges(outbound.stack, since) == []
    outbound.end_telnyx(first.json(), 0)


def test_auth_and_bad_input_answer_clearly_and_publish_nothing(outbound: Outbound):
    stack = outbound.stack
    topics = [t.name(stack.settings.topic_prefix) for t in (ADMISSION, OUTBOUND, CALL_EVENTS)]
    since = high_watermarks(stack, topics)
    good = {"to": TO, "fromNumberId": "n-tw"}
    cases = [
        (outbound.post(good, key=None), 401, "Authorization"),
        (outbound.post(good, key="not-a-key"), 401, "Authorization"),
        (outbound.post({"fromNumberId": "n-tw"}), 400, "to"),
        (outbound.post({**good, "to": "12345"}), 400, "to"),
        (outbound.post({"to": TO}), 400, "fromNumberId"),
        (outbound.post({**good, "ring": 3}), 400, "ring"),
        (outbound.post({**good, "providers": []}), 400, "providers"),
        (outbound.post({**good, "providers": ["telnyx-main"]}), 400, "providers"),
        (outbound.post({**good, "providers": ["twilio-main", "nope"]}), 400, "providers[1]"),
        (outbound.post({**good, "timeout": 1}), 400, "timeout"),
        (outbound.post({**good, "fromNumberId": "n-unknown"}), 404, "fromNumberId"),
        (outbound.post({**good, "fromNumberId": "n-tw-limit"}), 403, "fromNumberId"),
        (outbound.post({**good, "fromNumberId": "n-main"}), 400, "fromNumberId"),  # SIP
        (outbound.post({**good, "routeId": "r-limit"}), 404, "routeId"),
    ]
    for response, status, field in cases:
        assert response.status_code == status, (field, response.text)
        assert response.json()["field"] == field, response.text
    assert outbound.get("does-not-exist").status_code == 404
    assert published_by_webhook_edges(stack, since) == []
    # the key never reaches a log line or a topic
    assert KEY_MAIN not in outbound.log.read_text()


def test_plan_limit_gives_429_with_retry_after(outbound: Outbound):
    body = {"to": TO, "fromNumberId": "n-tw-limit"}
    held = outbound.held()
    first = outbound.post(body, key=KEY_LIMIT)
    assert first.status_code == 201, first.text
    sent_before = len(outbound.twilio.posts("Calls.json"))
    second = outbound.post(body, key=KEY_LIMIT)
    assert second.status_code == 429, second.text
    assert len(outbound.twilio.posts("Calls.json")) == sent_before  # refused: never dialed
    assert int(second.headers["Retry-After"]) > 0
    assert "limit" in second.json()["error"]
    # the first call ends (Twilio says busy): its slot is free again
    sent = [
        r for r in outbound.twilio.posts("Calls.json") if dict(r["body"])["From"] == "+15550000012"
    ]
    callback = dict(sent[-1]["body"])["StatusCallback"]
    busy = {"CallSid": first.json()["providerCallId"], "AccountSid": SIDS["twilio-main"],
            "To": TO, "From": "+15550000012", "CallStatus": "busy", "SequenceNumber": "1",
            "SipResponseCode": "486"}  # fmt: skip
    assert outbound.twilio_status(callback, busy).status_code == 204
    outbound.slots_free([first.json()["id"]], held, "b-limit")
    assert outbound.get(first.json()["id"], key=KEY_MAIN).status_code == 404  # another business


def test_dial_command(outbound: Outbound):
    s = outbound.stack.settings
    env = {**child_env(s), "TRUNKLINE_API_KEY": KEY_MAIN}
    done = subprocess.run(
        [sys.executable, "-m", "trunkline.cli", "dial", TO, "--from", "n-telnyx-main",
         "--provider", "telnyx-main", "--api", outbound.url],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "telnyx-main" in done.stdout and "placed" in done.stdout


# -- a crash of the HTTP edge (last: it restarts the module's edge) -------------------------
def test_a_killed_edge_resumes_its_calls_without_dialing_twice(outbound: Outbound):
    """Two calls in flight when the edge is killed (SIGKILL): one placed (201), one whose
    create-call request Telnyx never answered. The edge restarted with the same dialer id
    replays its journal: the placed call still ends when Telnyx reports its hangup, and
    the unanswered attempt is checked by repeating the request with the same command_id
    (Telnyx answers with the call it made), never dialed as a new call."""
    import signal
    import threading

    held = outbound.held()
    placed = outbound.post({"to": TO, "fromNumberId": "n-telnyx-main",
                            "providers": ["telnyx-main"]})  # fmt: skip
    assert placed.status_code == 201, placed.text
    hanging: dict[str, Any] = {}

    def post_hanging() -> None:
        try:
            hanging["r"] = outbound.post({"to": HELD_TO, "fromNumberId": "n-telnyx-main",
                                          "providers": ["telnyx-main"]})  # fmt: skip
        except requests.RequestException as exc:
            hanging["error"] = exc

    client = threading.Thread(target=post_hanging, daemon=True)
    client.start()
    deadline = time.monotonic() + 20
    while not [r for r in outbound.telnyx.posts("/v2/calls") if r["body"]["to"] == HELD_TO]:
        assert time.monotonic() < deadline, "the held dial never reached the stand-in"
        time.sleep(0.05)
    outbound.proc.send_signal(signal.SIGKILL)
    outbound.proc.wait(10)
    client.join(10)
    assert "r" not in hanging  # the client never got an answer: its connection died
    port = urlsplit(outbound.url).port
    log = outbound.stack.settings.state_dir / "webhook-o-restarted.log"
    env = {**child_env(outbound.stack.settings), **SECRETS, "TRUNKLINE_PUBLIC_URL": outbound.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trunkline.cli", "webhook-edge", "--edge-id", "webhook-o",
         "--listen", f"127.0.0.1:{port}"],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,  # noqa: SIM115
    )  # fmt: skip
    _edge.append(proc)
    outbound.proc, outbound.log = proc, log
    wait_healthy(proc, outbound.url, log)
    # the unanswered attempt was checked: the same command_id again, one call
    deadline = time.monotonic() + 30
    while len([r for r in outbound.telnyx.posts("/v2/calls") if r["body"]["to"] == HELD_TO]) < 2:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    dials = [r for r in outbound.telnyx.posts("/v2/calls") if r["body"]["to"] == HELD_TO]
    assert len(dials) == 2 and dials[0]["body"]["command_id"] == dials[1]["body"]["command_id"]
    # the first call, placed before the crash, still ends when Telnyx says so
    outbound.end_telnyx(placed.json(), 0)
    # the resumed one is the restarted dialer's: placed once, then ended by Telnyx too
    state = json.loads(base64.b64decode(dials[0]["body"]["client_state"]))
    shown = outbound.get(state["callQueueId"]).json()
    assert [a["outcome"] for a in shown["attempts"]] == ["placed"]
    hangup = {"data": {"event_type": "call.hangup", "id": str(uuid.uuid4()),
                       "payload": {"call_control_id": shown["providerCallId"],
                                   "connection_id": "conn-test",
                                   "client_state": dials[0]["body"]["client_state"],
                                   "hangup_cause": "normal_clearing", "to": HELD_TO}}}  # fmt: skip
    assert outbound.telnyx_event(hangup).status_code == 200
    outbound.entry(state["callQueueId"], "Completed")
    outbound.slots_free([placed.json()["id"], state["callQueueId"]], held)
