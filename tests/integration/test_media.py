"""A whole call on a real broker: SIP edge -> 302 -> media node -> RTP both ways -> BYE,
then the queue entry in ClickHouse and the plan slot free again."""

from __future__ import annotations

import wave
from collections.abc import Iterator

import numpy as np
import pytest

from media.agents.greeting import GREETING
from media.caller import place_call
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        kafka_bootstrap, tmp_path_factory.mktemp("media"), edges=("edge-a",), media=True
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
    _assign(stack, qid)
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
                            "customParameters": {"queueId": qid},
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
            r = place_call("127.0.0.1", s.edges["edge-a"], "+15550000009", seconds=3)
            assert r.error is None, r.error
            heard = np.frombuffer(bytes(r.received_pcm), dtype="<i2").astype(float)
            assert len(heard) > 8000
            assert dominant(heard[-4000:]) == pytest.approx(440, abs=10)  # the agent's echo
            start = seen["start"]
            assert start.custom_parameters["queueId"] == r.queue_id  # type: ignore[attr-defined]
            assert start.custom_parameters["businessId"] == "b-main"  # type: ignore[attr-defined]
            assert start.encoding == "audio/x-mulaw"  # type: ignore[attr-defined]
            assert seen["events"][:2] == ["Connected", "Start"]  # type: ignore[index]
            assert "Mark" in seen["events"]  # our mark came back once it had "played"
            entry = s.sink.poll(
                f"/calls/{r.queue_id}/",
                lambda e: isinstance(e, dict) and e.get("status") == "Completed",
                timeout=20,
            )
            assert entry["hangupSide"] == "caller"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def _assign(stack, qid):
    from schemas import SingleObjectCodec
    from tests.samples import sample
    from trunkline.core.kafka import Outgoing, make_producer, publish_all
    from trunkline.core.topics import ASSIGNMENTS

    routed = sample("CallRouted", call_id=qid)
    routed.update(backend_id="backend-1", region_id="us-east-1", business_id="b-main")
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
    _assign(stack, qid)
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
                            "custom_parameters": {"queueId": qid},
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
    _assign(stack, qid)
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
                        "queueId": qid,
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
    _assign(stack, qid)
    codec = G711Codec("PCMU")
    t = np.arange(8000 * 4) / 8000
    tone = (np.sin(2 * np.pi * 440 * t) * 6000).astype("<i2")
    frames = [codec.encode(tone[i * 160 : (i + 1) * 160].tobytes(), 8000)[0] for i in range(200)]
    report = asyncio.run(
        simulated_call(
            f"ws://127.0.0.1:{stack.media_ws_port}/twilio",
            frames=frames,
            config=SessionConfig(
                custom_parameters={"queueId": qid}, quiet_period_s=0.5, max_drain_s=2.0
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
