"""Provider media WebSockets against a media node in this process (its sockets on
localhost, its records caught instead of produced, its assignments handed in): bad input
ends only its own stream with a close code and a reason, a protocol error during a call
ends it as `failed` with the reason, a stream claims only its own provider's calls, and
the queue id is read under `callQueueId` (and its alias `queueId`) wherever a provider
carries it."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import aiohttp
import pytest

from tests.media_local import Node, run


def twilio_start(params: Any, stream: str = "MZ1") -> str:
    return json.dumps(
        {
            "event": "start",
            "streamSid": stream,
            "start": {
                "accountSid": "AC1",
                "streamSid": stream,
                "callSid": "CA1",
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def telnyx_start(params: Any = None, client_state: str = "") -> str:
    start: dict[str, Any] = {
        "call_control_id": "v3:x",
        "client_state": client_state,
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    }
    if params is not None:
        start["custom_parameters"] = params
    return json.dumps({"event": "start", "stream_id": "S1", "start": start})


def media_frame(seq: int) -> str:
    payload = base64.b64encode(b"\xff" * 160).decode()
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "sequence_number": str(seq),
            "media": {"track": "inbound", "payload": payload},
        }
    )


async def close_reason(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return ws.close_code, str(msg.extra or "")
        assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg


# -- valid JSON of the wrong shape, before the call --------------------------------------------
WRONG_SHAPES = [
    ("/twilio", "[]", "message is an array, not an object"),
    ("/twilio", "42", "message is a number, not an object"),
    ("/twilio", '"start"', "message is a string, not an object"),
    ("/twilio", '{"event": 5}', "event is a number, not a string"),
    ("/twilio", '{"event": "start", "start": [1]}', "start is an array, not an object"),
    ("/twilio", twilio_start(["callQueueId", "q"]), "customParameters is an array"),
    ("/twilio", twilio_start("q-1"), "customParameters is a string"),
    ("/twilio", twilio_start({"callQueueId": {"id": 1}}), "callQueueId is an object"),
    ("/telnyx", "[1, 2]", "message is an array, not an object"),
    ("/telnyx", telnyx_start(["q"]), "custom_parameters is an array"),
    ("/telnyx", telnyx_start("q"), "custom_parameters is a string"),
    ("/telnyx", '{"event": "start", "start": "x"}', "start is a string, not an object"),
    ("/vonage", "[]", "first message is an array, not an object"),
    ("/vonage", "true", "first message is a boolean, not an object"),
    (
        "/vonage",
        '{"content-type": "audio/l16;rate=16000", "callQueueId": ["q"]}',
        "header callQueueId is an array",
    ),
]


@pytest.mark.parametrize(("path", "text", "why"), WRONG_SHAPES)
def test_a_message_of_the_wrong_shape_closes_the_stream_1003_with_a_reason(path, text, why):
    async def test(n: Node) -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(n.url(path)) as ws:
            await ws.send_str(text)
            code, reason = await close_reason(ws)
        assert code == 1003
        assert why in reason
        assert n.caught.records == [] and n.node.claims == {}

    run(test)


@pytest.mark.parametrize("path", ["/twilio", "/telnyx"])
def test_a_binary_frame_on_a_json_protocol_closes_1003(path):
    async def test(n: Node) -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(n.url(path)) as ws:
            await ws.send_bytes(b"\x00\x01")
            code, reason = await close_reason(ws)
        assert code == 1003 and "binary frame" in reason

    run(test)


# -- a protocol error during the call ---------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        '{"event": "media", "media": "x"}',
        '{"event": "dtmf", "dtmf": {"digit": "11"}}',
        "[]",
    ],
)
def test_a_protocol_error_during_the_call_ends_it_as_failed_with_the_reason(bad):
    async def test(n: Node) -> None:
        qid = f"q-{uuid.uuid4().hex[:8]}"
        n.assign(qid, "TWILIO")
        async with aiohttp.ClientSession() as http, http.ws_connect(n.url("/twilio")) as ws:
            await ws.send_str(twilio_start({"callQueueId": qid}))
            await n.until(lambda: len(n.caught.history(qid)) == 2)  # accepted, answered
            await ws.send_str(media_frame(2))
            await ws.send_str(bad)
            code, reason = await close_reason(ws)
        assert code == 1003 and reason.startswith("TWILIO: ")
        await n.until(lambda: len(n.caught.history(qid)) == 3)
        names = [name for name, _ in n.caught.history(qid)]
        assert names == ["CallAccepted", "CallAnswered", "CallEnded"]
        ended = n.caught.history(qid)[-1][1]
        assert (ended["reason"], ended["hangup_side"]) == ("failed", "system")
        assert ended["detail"] == reason
        assert ended["media"]["packets_received"] == 1
        assert n.node.claims == {}
        await n.until(lambda: n.node.live == set())  # the close done: ENDING -> ENDED

    run(test)


# -- who may claim an entry -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "first"),
    [
        ("/twilio", lambda q: twilio_start({"callQueueId": q})),
        ("/telnyx", lambda q: telnyx_start({"callQueueId": q})),
        ("/vonage", lambda q: json.dumps({"content-type": "audio/l16", "callQueueId": q})),
    ],
)
def test_a_provider_stream_cannot_claim_a_sip_calls_entry(path, first):
    async def test(n: Node) -> None:
        qid = f"q-{uuid.uuid4().hex[:8]}"
        n.assign(qid, "SIP")
        async with aiohttp.ClientSession() as http, http.ws_connect(n.url(path)) as ws:
            await ws.send_str(first(qid))
            code, reason = await close_reason(ws)
        provider = path.strip("/").upper()
        assert code == 1008
        assert reason == f"403 queue entry {qid} is a SIP call, not a {provider} one"
        assert n.caught.records == [] and n.node.claims == {}
        assert n.node.entry(qid) is not None  # still there for its SIP INVITE

    run(test)


def test_a_twilio_stream_cannot_claim_a_telnyx_calls_entry():
    async def test(n: Node) -> None:
        n.assign("q-tx", "TELNYX")
        async with aiohttp.ClientSession() as http, http.ws_connect(n.url("/twilio")) as ws:
            await ws.send_str(twilio_start({"callQueueId": "q-tx"}))
            code, reason = await close_reason(ws)
        assert (code, reason) == (1008, "403 queue entry q-tx is a TELNYX call, not a TWILIO one")

    run(test)


def test_an_entry_taken_once_is_refused_to_a_second_stream():
    async def test(n: Node) -> None:
        n.assign("q-2x", "TWILIO")
        async with aiohttp.ClientSession() as http, http.ws_connect(n.url("/twilio")) as first:
            await first.send_str(twilio_start({"callQueueId": "q-2x"}))
            await n.until(lambda: "q-2x" in n.node.claims)
            async with http.ws_connect(n.url("/twilio")) as second:
                await second.send_str(twilio_start({"callQueueId": "q-2x"}, "MZ2"))
                code, reason = await close_reason(second)
        assert (code, reason) == (1008, "486 queue entry q-2x is already being processed")

    run(test)


# -- where the queue id comes from ----------------------------------------------------------------
def _telnyx_state(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


QUEUE_ID_CARRIERS = [
    ("/twilio", "", lambda q: twilio_start({"callQueueId": q}), "TWILIO"),
    ("/twilio", "", lambda q: twilio_start({"queueId": q}), "TWILIO"),  # the alias
    ("/twilio", "?callQueueId={q}", lambda q: twilio_start({}), "TWILIO"),
    ("/twilio", "?queueId={q}", lambda q: twilio_start(None), "TWILIO"),
    ("/telnyx", "", lambda q: telnyx_start({"callQueueId": q}), "TELNYX"),
    ("/telnyx", "", lambda q: telnyx_start(None, _telnyx_state(q)), "TELNYX"),
    (
        "/telnyx",
        "",
        lambda q: telnyx_start(None, _telnyx_state(json.dumps({"callQueueId": q}))),
        "TELNYX",
    ),
    ("/telnyx", "?callQueueId={q}", lambda q: telnyx_start(None), "TELNYX"),
    (
        "/vonage",
        "",
        lambda q: json.dumps({"content-type": "audio/l16;rate=16000", "callQueueId": q}),
        "VONAGE",
    ),
    (
        "/vonage",
        "?callQueueId={q}",
        lambda q: json.dumps({"content-type": "audio/l16;rate=8000"}),
        "VONAGE",
    ),
]


@pytest.mark.parametrize(("path", "query", "first", "provider"), QUEUE_ID_CARRIERS)
def test_the_queue_id_is_read_wherever_the_provider_carries_it(path, query, first, provider):
    async def test(n: Node) -> None:
        qid = f"q-{uuid.uuid4().hex[:8]}"
        n.assign(qid, provider)
        url = n.url(path + query.format(q=qid))
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.send_str(first(qid))
            await n.until(lambda: len(n.caught.history(qid)) == 2)
            assert n.node.claims.keys() == {qid}
        await n.until(lambda: len(n.caught.history(qid)) == 3)  # our close: the caller left
        ended = n.caught.history(qid)[-1][1]
        assert (ended["reason"], ended["hangup_side"]) == ("completed", "caller")

    run(test)


def test_an_entry_that_arrives_during_the_wait_is_taken():
    async def test(n: Node) -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(n.url("/twilio")) as ws:
            await ws.send_str(twilio_start({"callQueueId": "q-late"}))
            await asyncio.sleep(0.1)
            n.assign("q-late", "TWILIO")
            await n.until(lambda: len(n.caught.history("q-late")) == 2)

    run(test, wait_s=2.0)


def test_an_entry_that_never_arrives_is_refused_after_the_wait():
    async def test(n: Node) -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(n.url("/twilio")) as ws:
            t0 = asyncio.get_running_loop().time()
            await ws.send_str(twilio_start({"callQueueId": "q-none"}))
            code, reason = await close_reason(ws)
            waited = asyncio.get_running_loop().time() - t0
        assert (code, reason) == (1008, "404 queue entry q-none is not assigned to this node")
        assert 0.25 <= waited < 2.0
        assert n.node.live == set()

    run(test, wait_s=0.3)


def test_a_stream_without_a_queue_id_is_refused():
    async def test(n: Node) -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(n.url("/twilio")) as ws:
            await ws.send_str(twilio_start({}))
            assert await close_reason(ws) == (1008, "404 no callQueueId")

    run(test)


# -- DTMF and the agent's hang-up ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "first", "dtmf", "provider"),
    [
        (
            "/twilio",
            lambda q: twilio_start({"callQueueId": q}),
            json.dumps({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "#"}}),
            "TWILIO",
        ),
        (
            "/vonage",
            lambda q: json.dumps({"content-type": "audio/l16;rate=16000", "callQueueId": q}),
            json.dumps({"event": "websocket:dtmf", "digit": "#", "duration": 260}),
            "VONAGE",
        ),
    ],
)
def test_dtmf_reaches_the_agent_whose_hang_up_closes_the_stream(path, first, dtmf, provider):
    """The greeting agent hangs up on '#': the node closes the stream (1000) and the call
    ends as completed by the agent."""

    async def test(n: Node) -> None:
        qid = f"q-{uuid.uuid4().hex[:8]}"
        n.assign(qid, provider)
        async with aiohttp.ClientSession() as http, http.ws_connect(n.url(path)) as ws:
            await ws.send_str(first(qid))
            await n.until(lambda: len(n.caught.history(qid)) == 2)
            await ws.send_str(dtmf)
            code, _ = await close_reason(ws)
        assert code == 1000
        await n.until(lambda: len(n.caught.history(qid)) == 3)
        ended = n.caught.history(qid)[-1][1]
        assert (ended["reason"], ended["hangup_side"]) == ("completed", "agent")
        await n.until(lambda: n.node.live == set())

    run(test)
