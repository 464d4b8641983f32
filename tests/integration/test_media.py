"""A whole call on a real broker: SIP edge -> 302 -> media node -> RTP both ways -> BYE,
then the queue entry in ClickHouse and the plan slot free again; and the ways a call on
the node ends otherwise (CANCEL during the assignment wait, no RTP, a UA that never
answers our BYE, provider streams that misbehave). The shared stack's node ends a call
after 3 s without RTP (`--media-timeout 3`)."""

from __future__ import annotations

import wave
from collections.abc import Iterator

import numpy as np
import pytest

from media.agents.greeting import GREETING
from media.caller import place_call
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.integration
MEDIA_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        kafka_bootstrap,
        tmp_path_factory.mktemp("media"),
        edges=("edge-a",),
        media=True,
        media_args=("--media-timeout", str(MEDIA_TIMEOUT_S)),
    ) as s:
        s.worker.poll("/state/routing-heartbeats/", lambda b: "backend-1" in b, timeout=30)
        yield s


def greeting_8k() -> np.ndarray:
    with wave.open(str(GREETING), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(float)
    return pcm[::2]  # 16 kHz -> 8 kHz (the clip has nothing above 4 kHz)


def dominant(x: np.ndarray, rate: int = 8000) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


def test_call_hears_the_greeting_gets_its_echo_and_ends_completed(stack):
    port = stack.edges["edge-a"]
    r = place_call("127.0.0.1", port, "+15550000002", seconds=3)
    assert r.error is None, r.error
    assert r.redirect.status == 302 and r.answer.status == 200
    assert r.answer.headers.get("content-type") == "application/sdp"
    assert r.bye_status == 200
    heard = np.frombuffer(bytes(r.received_pcm), dtype="<i2").astype(float)
    clip = greeting_8k()
    assert len(heard) >= len(clip) + 8000  # the greeting and at least a second more
    # the greeting: the decoded audio matches the clip (G.711 round trip, aligned search)
    window = heard[: len(clip) + 1600]
    corr = np.correlate(window, clip, mode="valid")
    best = int(np.argmax(corr))
    aligned = window[best : best + len(clip)]
    similarity = float(np.dot(aligned, clip) / (np.linalg.norm(aligned) * np.linalg.norm(clip)))
    assert similarity > 0.9
    # then the echo of our 440 Hz tone
    after = heard[best + len(clip) + 1600 :]
    assert len(after) > 4000 and dominant(after[-4000:]) == pytest.approx(440, abs=10)
    entry = stack.sink.poll(
        f"/calls/{r.queue_id}/",
        lambda e: isinstance(e, dict) and e.get("status") == "Completed",
        timeout=20,
    )
    assert entry["hangupSide"] == "caller" and entry["codec"] == "PCMU/8000"
    assert entry["talkMs"] >= 2500
    assert entry["media"]["packetsReceived"] >= 140 and entry["media"]["packetsSent"] >= 140
    assert [log["message"].split(" by ")[0].split(":")[0] for log in entry["logs"]][3:] == [
        "Call accepted",
        "Call answered",
        "Call ended",
    ]
    stack.worker.poll("/state/admission-active/", lambda a: a.get("b-main", []) == [])
    stack.worker.poll("/state/routing-held/", lambda h: h.get("backend-1", 0) == 0)


def test_dtmf_reaches_the_agent(stack):
    """The greeting agent hangs up on '#': the call ends from the agent's side."""
    r = place_call(
        "127.0.0.1", stack.edges["edge-a"], "+15550000002", seconds=2, dtmf="#", hang_up=False
    )
    assert r.error is None, r.error
    entry = stack.sink.poll(
        f"/calls/{r.queue_id}/",
        lambda e: isinstance(e, dict) and e.get("status") == "Completed",
        timeout=20,
    )
    assert entry["hangupSide"] == "agent"


def test_unknown_queue_id_is_refused_by_the_node(stack):
    import socket

    from edge.sip.message import parse_message

    args = list(stack.procs[-1].args)
    cfg_port = int(args[args.index("--listen") + 1].rsplit(":", 1)[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    h, p = sock.getsockname()
    invite = (
        f"INVITE sip:+15550000002@127.0.0.1:{cfg_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {h}:{p};branch=z9hG4bKnoqueue;rport\r\nMax-Forwards: 70\r\n"
        f"From: <sip:x@{h}>;tag=1\r\nTo: <sip:+15550000002@127.0.0.1>\r\nCall-ID: noq@x\r\n"
        f"CSeq: 1 INVITE\r\nX-CallQueue-Id: not-a-queue-id\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    sock.sendto(invite, ("127.0.0.1", cfg_port))
    sock.settimeout(5)
    final = None
    while final is None or final.status < 200:
        final = parse_message(sock.recvfrom(65535)[0])
    sock.close()
    assert final.status == 404
    assert "not-a-queue-id is not assigned to this node" in final.headers.get("warning")


def test_node_killed_mid_call_ends_it_as_backend_lost(kafka_bootstrap, tmp_path):
    """Its own stack: killing the media node must not disturb the other tests."""
    import signal
    import threading

    with running_stack(
        kafka_bootstrap,
        tmp_path / "lost",
        edges=("edge-a",),
        media=True,
        env={"TRUNKLINE_HEARTBEAT_TIMEOUT_MS": "3000"},
    ) as s:
        s.worker.poll("/state/routing-heartbeats/", lambda b: "backend-1" in b, timeout=30)
        node = s.procs[-1]
        killer = threading.Timer(1.5, lambda: node.send_signal(signal.SIGKILL))
        killer.start()
        r = place_call("127.0.0.1", s.edges["edge-a"], "+15550000002", seconds=3, hang_up=False)
        killer.join()
        assert r.answer is not None and r.answer.status == 200
        entry = s.sink.poll(
            f"/calls/{r.queue_id}/",
            lambda e: isinstance(e, dict) and e.get("status") == "Failed",
            timeout=30,
        )
        assert entry["reason"] == "backend_lost" and entry["hangupSide"] == "system"
        s.worker.poll("/state/admission-active/", lambda a: a.get("b-main", []) == [])
        s.worker.poll("/state/routing-held/", lambda h: h.get("backend-1", 0) == 0)


def test_twilio_media_stream_gets_greeting_and_echo(stack):
    """A client speaking Twilio Media Streams as documented, against the node's /twilio."""
    import asyncio
    import base64
    import json
    import uuid

    import aiohttp

    from media.codecs import G711Codec

    qid = f"tw-{uuid.uuid4().hex[:10]}"
    _assign(stack, qid, "TWILIO")
    codec = G711Codec("PCMU")
    t = np.arange(8000 * 3) / 8000
    tone = (np.sin(2 * np.pi * 440 * t) * 6000).astype("<i2")
    heard = bytearray()

    async def run() -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"ws://127.0.0.1:{stack.media_ws_port}/twilio") as ws,
        ):
            await ws.send_str(
                json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            )
            await ws.send_str(
                json.dumps(
                    {
                        "event": "start",
                        "sequenceNumber": "1",
                        "streamSid": "MZ1",
                        "start": {
                            "accountSid": "AC1",
                            "streamSid": "MZ1",
                            "callSid": "CA1",
                            "tracks": ["inbound"],
                            "customParameters": {"callQueueId": qid},
                            "mediaFormat": {
                                "encoding": "audio/x-mulaw",
                                "sampleRate": 8000,
                                "channels": 1,
                            },
                        },
                    }
                )
            )

            async def receive() -> None:
                async for msg in ws:
                    data = json.loads(msg.data)
                    if data["event"] == "media":
                        heard.extend(
                            codec.decode(base64.b64decode(data["media"]["payload"]), 0, 8000)
                        )

            rx = asyncio.create_task(receive())
            for i in range(150):
                chunk = codec.encode(tone[i * 160 : (i + 1) * 160].tobytes(), 8000)[0]
                await ws.send_str(
                    json.dumps(
                        {
                            "event": "media",
                            "sequenceNumber": str(i + 2),
                            "streamSid": "MZ1",
                            "media": {
                                "track": "inbound",
                                "chunk": str(i + 1),
                                "timestamp": str(i * 20),
                                "payload": base64.b64encode(chunk).decode(),
                            },
                        }
                    )
                )
                await asyncio.sleep(0.02)
            await ws.send_str(
                json.dumps(
                    {
                        "event": "stop",
                        "sequenceNumber": "200",
                        "streamSid": "MZ1",
                        "stop": {"accountSid": "AC1", "callSid": "CA1"},
                    }
                )
            )
            await asyncio.wait_for(rx, 5)

    asyncio.run(run())
    x = np.frombuffer(bytes(heard), dtype="<i2").astype(float)
    clip = greeting_8k()
    assert len(x) > len(clip)
    window = x[: len(clip) + 1600]
    best = int(np.argmax(np.correlate(window, clip, mode="valid")))
    aligned = window[best : best + len(clip)]
    assert np.dot(aligned, clip) / (np.linalg.norm(aligned) * np.linalg.norm(clip)) > 0.9
    assert dominant(x[-4000:]) == pytest.approx(440, abs=10)
    entry = stack.sink.poll(
        f"/calls/{qid}/",
        lambda e: isinstance(e, dict) and e.get("status") == "Completed",
        timeout=20,
    )
    assert entry["processingBackendServerId"] == "backend-1" and entry["hangupSide"] == "caller"
    assert entry["media"]["packetsReceived"] == 150


def test_websocket_agent_bridges_the_call_to_a_twilio_protocol_server(kafka_bootstrap, tmp_path):
    """The route's agent is `websocket`: the node plays Twilio's part towards an external
    agent server (here one that echoes what it hears and answers marks)."""
    import asyncio
    import copy
    import threading

    from aiohttp import web

    from media.providers import twilio
    from tests.stack import CONFIG

    seen: dict[str, object] = {"events": []}

    async def agent_server(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            event = twilio.parse(msg.data)
            seen["events"].append(type(event).__name__)  # type: ignore[union-attr]
            if isinstance(event, twilio.Start):
                seen["start"] = event
                await ws.send_str(twilio.mark_message(event.stream_sid, "hello"))
            elif isinstance(event, twilio.Media):
                await ws.send_str(twilio.media_message("x", event.payload))  # echo
            elif isinstance(event, twilio.Dtmf):
                seen["dtmf"] = event.digit
        return ws

    loop = asyncio.new_event_loop()
    port = __import__("tests.harness", fromlist=["free_port"]).free_port()
    app = web.Application()
    app.router.add_get("/agent", agent_server)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = copy.deepcopy(CONFIG)
    config["routes"].append(
        {
            "id": "r-ws",
            "businessId": "b-main",
            "agent": "websocket",
            "agentOptions": {"url": f"ws://127.0.0.1:{port}/agent"},
        }
    )
    config["numbers"].append(
        {
            "id": "n-ws",
            "businessId": "b-main",
            "provider": "SIP",
            "number": "+15550000009",
            "routeId": "r-ws",
            "regionId": "us-east-1",
        }
    )
    try:
        with running_stack(
            kafka_bootstrap, tmp_path / "ws", edges=("edge-a",), media=True, config=config
        ) as s:
            s.worker.poll("/state/routing-heartbeats/", lambda b: "backend-1" in b, timeout=30)
            r = place_call("127.0.0.1", s.edges["edge-a"], "+15550000009", seconds=3, dtmf="5")
            assert r.error is None, r.error
            heard = np.frombuffer(bytes(r.received_pcm), dtype="<i2").astype(float)
            assert len(heard) > 8000
            assert dominant(heard[-4000:]) == pytest.approx(440, abs=10)  # the agent's echo
            start = seen["start"]
            assert start.custom_parameters["callQueueId"] == r.queue_id  # type: ignore[attr-defined]
            assert start.custom_parameters["queueId"] == r.queue_id  # type: ignore[attr-defined]
            assert start.custom_parameters["businessId"] == "b-main"  # type: ignore[attr-defined]
            assert start.encoding == "audio/x-mulaw"  # type: ignore[attr-defined]
            assert seen["events"][:2] == ["Connected", "Start"]  # type: ignore[index]
            assert "Mark" in seen["events"]  # our mark came back once it had "played"
            assert seen["dtmf"] == "5"  # the caller's key, RFC 4733 in, Twilio's dtmf out
            entry = s.sink.poll(
                f"/calls/{r.queue_id}/",
                lambda e: isinstance(e, dict) and e.get("status") == "Completed",
                timeout=20,
            )
            assert entry["hangupSide"] == "caller"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def _assign(stack, qid, provider="SIP"):
    """A CallRouted for backend-1, straight to its assignments (no admission, no routing:
    only the node's side of the call is under test)."""
    import time

    from schemas import SingleObjectCodec
    from tests.samples import sample
    from trunkline.core.kafka import Outgoing, make_producer, publish_all
    from trunkline.core.topics import ASSIGNMENTS

    routed = sample("CallRouted", call_id=qid)
    routed.update(
        backend_id="backend-1",
        region_id="us-east-1",
        business_id="b-main",
        provider=provider,
        redirect_deadline=int(time.time() * 1000) + 60_000,  # unclaimed, forgotten after
    )
    publish_all(
        make_producer(stack.settings.kafka_bootstrap),
        [
            Outgoing(
                ASSIGNMENTS.name(stack.settings.topic_prefix),
                b"backend-1",
                SingleObjectCodec().encode("CallRouted", routed),
            )
        ],
    )


def _greeting_then_echo(pcm16: bytes) -> None:
    x = np.frombuffer(pcm16, dtype="<i2").astype(float)[::2]  # 16 kHz -> 8 kHz
    clip = greeting_8k()
    window = x[: len(clip) + 1600]
    best = int(np.argmax(np.correlate(window, clip, mode="valid")))
    aligned = window[best : best + len(clip)]
    assert np.dot(aligned, clip) / (np.linalg.norm(aligned) * np.linalg.norm(clip)) > 0.9
    assert dominant(x[-4000:]) == pytest.approx(440, abs=10)


def test_telnyx_stream_with_pcma_and_frames_out_of_order(stack):
    import asyncio
    import base64
    import json
    import uuid

    import aiohttp

    from media.codecs import G711Codec

    qid = f"tx-{uuid.uuid4().hex[:10]}"
    _assign(stack, qid, "TELNYX")
    alaw = G711Codec("PCMA")
    t = np.arange(8000 * 3) / 8000
    tone = (np.sin(2 * np.pi * 440 * t) * 6000).astype("<i2")
    heard = bytearray()

    async def run() -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"ws://127.0.0.1:{stack.media_ws_port}/telnyx") as ws,
        ):
            await ws.send_str(json.dumps({"event": "connected", "version": "1.0.0"}))
            await ws.send_str(
                json.dumps(
                    {
                        "event": "start",
                        "sequence_number": "1",
                        "stream_id": "S1",
                        "start": {
                            "call_control_id": "v3:x",
                            "media_format": {
                                "encoding": "PCMA",
                                "sample_rate": 8000,
                                "channels": 1,
                            },
                            "custom_parameters": {"queueId": qid},  # the old name
                        },
                    }
                )
            )

            async def receive() -> None:
                async for msg in ws:
                    data = json.loads(msg.data)
                    if data["event"] == "media":
                        heard.extend(
                            alaw.decode(base64.b64decode(data["media"]["payload"]), 0, 16000)
                        )

            rx = asyncio.create_task(receive())
            frames = [
                json.dumps(
                    {
                        "event": "media",
                        "sequence_number": str(i + 2),
                        "stream_id": "S1",
                        "media": {
                            "track": "inbound",
                            "chunk": str(i + 1),
                            "timestamp": str(i * 20),
                            "payload": base64.b64encode(
                                alaw.encode(tone[i * 160 : (i + 1) * 160].tobytes(), 8000)[0]
                            ).decode(),
                        },
                    }
                )
                for i in range(150)
            ]
            for i in range(0, 150, 2):  # pairs swapped: order is not guaranteed
                for f in reversed(frames[i : i + 2]):
                    await ws.send_str(f)
                await asyncio.sleep(0.04)
            await ws.send_str(
                json.dumps(
                    {"event": "stop", "sequence_number": "200", "stream_id": "S1", "stop": {}}
                )
            )
            await asyncio.wait_for(rx, 5)

    asyncio.run(run())
    _greeting_then_echo(bytes(heard))
    entry = stack.sink.poll(
        f"/calls/{qid}/",
        lambda e: isinstance(e, dict) and e.get("status") == "Completed",
        timeout=20,
    )
    assert entry["codec"] == "PCMA/8000"
    assert entry["media"]["packetsReceived"] == 150 and entry["media"]["packetsLost"] == 0


def test_vonage_binary_l16_stream(stack):
    import asyncio
    import json
    import uuid

    import aiohttp

    qid = f"vn-{uuid.uuid4().hex[:10]}"
    _assign(stack, qid, "VONAGE")
    t = np.arange(16000 * 3) / 16000
    tone = (np.sin(2 * np.pi * 440 * t) * 6000).astype("<i2").tobytes()
    heard = bytearray()
    sizes = set()

    async def run() -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"ws://127.0.0.1:{stack.media_ws_port}/vonage") as ws,
        ):
            await ws.send_str(
                json.dumps(
                    {
                        "event": "websocket:connected",
                        "content-type": "audio/l16;rate=16000",
                        "callQueueId": qid,
                    }
                )
            )

            async def receive() -> None:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        sizes.add(len(msg.data))
                        heard.extend(msg.data)

            rx = asyncio.create_task(receive())
            for i in range(150):
                await ws.send_bytes(tone[i * 640 : (i + 1) * 640])
                await asyncio.sleep(0.02)
            await ws.close()
            await asyncio.wait_for(rx, 5)

    asyncio.run(run())
    assert sizes == {640}  # 20 ms frames of L16 at 16 kHz
    _greeting_then_echo(bytes(heard))
    entry = stack.sink.poll(
        f"/calls/{qid}/",
        lambda e: isinstance(e, dict) and e.get("status") == "Completed",
        timeout=20,
    )
    assert entry["codec"] == "L16/16000" and entry["media"]["packetsReceived"] == 150


def test_ua_that_drops_the_queue_id_is_matched_by_its_call_id(stack):
    r = place_call(
        "127.0.0.1", stack.edges["edge-a"], "+15550000002", seconds=1, drop_queue_id=True
    )
    assert r.error is None, r.error
    assert r.answer.status == 200 and r.bye_status == 200
    stack.sink.poll(
        f"/calls/{r.queue_id}/",
        lambda e: isinstance(e, dict) and e.get("status") == "Completed",
        timeout=20,
    )


def test_sip_over_tcp_on_the_node(stack):
    import socket
    import uuid

    from edge.sip.framing import StreamFramer
    from edge.sip.message import parse_message

    qid = f"tcp-{uuid.uuid4().hex[:10]}"
    _assign(stack, qid)
    args = list(stack.procs[-1].args)
    port = int(args[args.index("--listen") + 1].rsplit(":", 1)[1])
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    sdp = (
        f"v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp.getsockname()[1]} RTP/AVP 8\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    h, p = sock.getsockname()
    framer = StreamFramer()

    def request(method: str, cseq: int, to: str, body: bytes = b"") -> None:
        sock.sendall(
            (
                f"{method} sip:+15550000002@127.0.0.1:{port};transport=tcp SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP {h}:{p};branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
                f"From: <sip:t@{h}>;tag=t1\r\nTo: {to}\r\nCall-ID: {qid}@tcp\r\n"
                f"CSeq: {cseq} {method}\r\nX-CallQueue-Id: {qid}\r\nContact: <sip:t@{h}:{p}>\r\n"
                + ("Content-Type: application/sdp\r\n" if body else "")
                + f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )

    def final(method: str):
        while True:
            while (data := framer.next_message()) is None:
                framer.receive_data(sock.recv(65535))
            msg = parse_message(data, stream=True)
            if msg.cseq[1] == method and msg.status >= 200:
                return msg

    request("INVITE", 1, "<sip:+15550000002@127.0.0.1>", sdp)
    ok = final("INVITE")
    assert ok.status == 200 and b"RTP/AVP 8" in ok.body  # PCMA, as offered
    to = f"<sip:+15550000002@127.0.0.1>;tag={ok.to.tag}"
    request("ACK", 1, to)
    rtp.settimeout(3)
    assert len(rtp.recvfrom(2048)[0]) == 172  # the greeting arrives: 12 + 160 bytes
    request("BYE", 2, to)
    assert final("BYE").status == 200
    sock.close()
    rtp.close()
    entry = stack.sink.poll(
        f"/calls/{qid}/",
        lambda e: isinstance(e, dict) and e.get("status") == "Completed",
        timeout=20,
    )
    assert entry["codec"] == "PCMA/8000"


def test_streamdouble_twilio_simulator_hears_the_greeting_and_its_echo(stack):
    """An independent Twilio Media Streams implementation (streamdouble, from PyPI) plays
    Twilio's side against the node's /twilio: its protocol checks find no violation, and
    what it records is the greeting then the echo of its tone."""
    import asyncio
    import uuid

    from streamdouble.api import call as simulated_call
    from streamdouble.session import SessionConfig

    from media.codecs import G711Codec

    qid = f"sd-{uuid.uuid4().hex[:10]}"
    _assign(stack, qid, "TWILIO")
    codec = G711Codec("PCMU")
    t = np.arange(8000 * 4) / 8000
    tone = (np.sin(2 * np.pi * 440 * t) * 6000).astype("<i2")
    frames = [codec.encode(tone[i * 160 : (i + 1) * 160].tobytes(), 8000)[0] for i in range(200)]
    report = asyncio.run(
        simulated_call(
            f"ws://127.0.0.1:{stack.media_ws_port}/twilio",
            frames=frames,
            config=SessionConfig(
                custom_parameters={"callQueueId": qid}, quiet_period_s=0.5, max_drain_s=2.0
            ),
        )
    )
    assert report.violations == [] and report.result.warnings == []
    assert report.spoke and report.time_to_first_audio_ms is not None
    x = np.frombuffer(codec.decode(report.audio_received, 0, 8000), dtype="<i2").astype(float)
    clip = greeting_8k()
    window = x[: len(clip) + 1600]
    best = int(np.argmax(np.correlate(window, clip, mode="valid")))
    aligned = window[best : best + len(clip)]
    assert np.dot(aligned, clip) / (np.linalg.norm(aligned) * np.linalg.norm(clip)) > 0.9
    after = x[best + len(clip) + 1600 :]
    assert len(after) > 4000 and dominant(after[:4000]) == pytest.approx(440, abs=10)
    entry = stack.sink.poll(
        f"/calls/{qid}/",
        lambda e: isinstance(e, dict) and e.get("status") == "Completed",
        timeout=20,
    )
    assert entry["hangupSide"] == "caller"
    assert entry["media"]["packetsReceived"] == 200


# -- the ways a call on the node ends, on the wire ------------------------------------------
class RawUA:
    """A SIP UA that is only a UDP socket: the test writes every request and sees every
    datagram the node sends (answers, retransmissions, its BYEs)."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.host, self.port = self.sock.getsockname()
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never sends
        self.rtp.bind(("127.0.0.1", 0))
        self.call_id = f"{uuid4_hex()}@raw-ua"

    def sdp(self) -> bytes:
        return (
            f"v=0\r\no=ua 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp.getsockname()[1]} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        ).encode()

    def send(
        self,
        method: str,
        port: int,
        cseq: int,
        to: str,
        branch: str,
        extra: str = "",
        body: bytes = b"",
    ) -> None:
        data = (
            f"{method} sip:+15550000002@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:ua@{self.host}>;tag=ua1\r\nTo: {to}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:ua@{self.host}:{self.port}>\r\n{extra}"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.sock.sendto(data, ("127.0.0.1", port))

    def receive(self, timeout: float):
        """(arrival time, raw bytes, parsed message), or None after `timeout`."""
        import time

        from edge.sip.message import parse_message

        self.sock.settimeout(max(0.001, timeout))
        try:
            data, _ = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        return time.monotonic(), data, parse_message(data)

    def final(self, method: str, timeout: float = 10):
        import time

        deadline = time.monotonic() + timeout
        while (got := self.receive(deadline - time.monotonic())) is not None:
            msg = got[2]
            if getattr(msg, "status", 0) >= 200 and msg.cseq[1] == method:
                return msg
        raise AssertionError(f"no final response to {method}")

    def close(self) -> None:
        self.sock.close()
        self.rtp.close()


def uuid4_hex() -> str:
    import uuid

    return uuid.uuid4().hex[:16]


def _redirected_call(stack: Stack, ua: RawUA) -> tuple[str, str]:
    """INVITE through the edge (302, ACK), then to the node (200, ACK): the queue id and
    the To of the node's dialog."""
    from edge.sip.message import NameAddr

    edge = stack.edges["edge-a"]
    to = "<sip:+15550000002@127.0.0.1>"
    ua.send("INVITE", edge, 1, to, "z9hG4bK" + uuid4_hex(), body=ua.sdp())
    redirect = ua.final("INVITE")
    assert redirect.status == 302
    ua.send("ACK", edge, 1, f"{to};tag={redirect.to.tag}", redirect.top_via.branch)
    qid = NameAddr.parse(redirect.headers.get("contact")).uri.headers["X-CallQueue-Id"]
    ua.send(
        "INVITE",
        stack.media_sip_port,
        2,
        to,
        "z9hG4bK" + uuid4_hex(),
        f"X-CallQueue-Id: {qid}\r\n",
        ua.sdp(),
    )
    ok = ua.final("INVITE")
    assert ok.status == 200
    dialog_to = f"{to};tag={ok.to.tag}"
    ua.send("ACK", stack.media_sip_port, 2, dialog_to, "z9hG4bK" + uuid4_hex())
    return qid, dialog_to


def test_a_bye_to_a_ua_that_never_answers_is_retransmitted_then_given_up(stack):
    """No RTP: the node ends the call (media_timeout) and sends BYE over UDP. The UA never
    answers: the same BYE comes again after T1, 2T1, 4T1, then every T2 (Timer E), and
    stops at 64*T1 (Timer F). The call was ended (and its slots freed) at the first BYE."""
    import itertools
    import threading
    import time

    ua = RawUA()
    try:
        qid, _ = _redirected_call(stack, ua)
        byes: list[tuple[float, bytes]] = []

        def listen() -> None:
            deadline = time.monotonic() + MEDIA_TIMEOUT_S + 10
            while (got := ua.receive(deadline - time.monotonic())) is not None:
                at, data, msg = got
                if getattr(msg, "method", "") == "BYE":
                    byes.append((at, data))
                    deadline = byes[0][0] + 64 * 0.5 + 3  # past Timer F, and then some
                # anything else (200 OK retransmissions before our ACK landed) is ignored

        listener = threading.Thread(target=listen)
        listener.start()
        entry = stack.sink.poll(
            f"/calls/{qid}/", lambda e: isinstance(e, dict) and "endedAt" in e, timeout=30
        )
        stack.worker.poll("/state/admission-active/", lambda a: qid not in a.get("b-main", []))
        stack.worker.poll("/state/routing-held/", lambda h: h.get("backend-1", 0) == 0)
        freed_at = time.monotonic()
        listener.join(60)
    finally:
        ua.close()
    assert entry["reason"] == "media_timeout" and entry["hangupSide"] == "system"
    assert len(byes) == 11, [round(b[0] - byes[0][0], 2) for b in byes]
    assert len({data for _, data in byes}) == 1  # the same request: branch and CSeq kept
    gaps = [round(b[0] - a[0], 2) for a, b in itertools.pairwise(byes)]
    assert gaps == pytest.approx([0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4], abs=0.25), gaps
    assert freed_at < byes[-1][0]  # the slots did not wait for the BYE to give up


def test_rtp_timeout_ends_the_call_as_media_timeout_and_frees_its_slots(stack):
    r = place_call("127.0.0.1", stack.edges["edge-a"], "+15550000002", seconds=1, hang_up=False)
    assert r.error is None, r.error
    assert r.answer is not None and r.answer.status == 200
    entry = stack.sink.poll(
        f"/calls/{r.queue_id}/",
        lambda e: isinstance(e, dict) and e.get("reason") == "media_timeout",
        timeout=30,
    )
    assert entry["status"] == "Failed" and entry["hangupSide"] == "system"
    assert entry["talkMs"] >= MEDIA_TIMEOUT_S * 1000
    assert entry["media"]["packetsReceived"] >= 40
    stack.worker.poll("/state/admission-active/", lambda a: r.queue_id not in a.get("b-main", []))
    stack.worker.poll("/state/routing-held/", lambda h: h.get("backend-1", 0) == 0)


def test_cancel_during_the_assignment_wait_is_answered_and_the_call_ends_cancelled(stack):
    """The UA reaches the node before its assignment does and gives up: CANCEL gets 200,
    the INVITE 487. The call's offer then passes admission and routing (which hold a plan
    and a backend slot for it) and its assignment reaches the node, which ends the queue
    entry as `cancelled`: both slots are freed."""
    from tests.samples import sample
    from trunkline.core.topics import ADMISSION

    qid = f"cx-{uuid4_hex()}"
    ua = RawUA()
    to = "<sip:+15550000002@127.0.0.1>"
    branch = "z9hG4bK" + uuid4_hex()
    try:
        ua.send(
            "INVITE", stack.media_sip_port, 1, to, branch, f"X-CallQueue-Id: {qid}\r\n", ua.sdp()
        )
        got = ua.receive(5)
        assert got is not None and got[2].status == 100  # the node waits for the entry
        ua.send("CANCEL", stack.media_sip_port, 1, to, branch)
        answers = []
        while len(answers) < 2 and (got := ua.receive(5)) is not None:
            if got[2].status >= 200:
                answers.append((got[2].cseq[1], got[2].status))
        assert answers == [("CANCEL", 200), ("INVITE", 487)]
        tag = got[2].to.tag
        ua.send("ACK", stack.media_sip_port, 1, f"{to};tag={tag}", branch)
        offered = sample("CallOffered", call_id=qid)
        offered.update(
            business_id="b-main",
            phone_id="n-main",
            to_number="+15550000002",
            source_ip="127.0.0.1",
            provider_call_id=ua.call_id,
            edge_id="edge-nobody",
        )
        stack.publish(ADMISSION.name(stack.settings.topic_prefix), "b-main", "CallOffered", offered)
        entry = stack.sink.poll(
            f"/calls/{qid}/",
            lambda e: isinstance(e, dict) and e.get("status") == "Cancelled",
            timeout=30,
        )
    finally:
        ua.close()
    assert entry["hangupSide"] == "caller"
    assert entry["processingBackendServerId"] == "backend-1"
    assert [log["message"].split(" ")[:2] for log in entry["logs"]][-1] == ["Call", "ended:"]
    stack.worker.poll("/state/admission-active/", lambda a: qid not in a.get("b-main", []))
    stack.worker.poll("/state/routing-held/", lambda h: h.get("backend-1", 0) == 0)
