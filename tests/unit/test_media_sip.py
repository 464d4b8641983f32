"""The media node's SIP side against a UA that is only a UDP socket, with the node in this
process (tests/media_local.py): hold and resume, BYE either way, CANCEL, a used-up queue
entry, and a UA that answers our BYE (one BYE, no retransmission)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from edge.sip.message import Request, Response, parse_message
from media.call import State
from media.rtp import RtpPacket
from tests.media_local import Node, run

TO = "<sip:+15550000002@127.0.0.1>"


class UA(asyncio.DatagramProtocol):
    """SIP on one UDP socket, RTP on another; what arrives is queued for the test."""

    def __init__(self) -> None:
        self.sip: asyncio.Queue[Request | Response] = asyncio.Queue()
        self.rtp_packets = 0
        self.call_id = f"{uuid.uuid4().hex[:12]}@ua"
        self.transport: Any = None
        self.rtp_transport: Any = None

    async def open(self) -> UA:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        ua = self

        class Rtp(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                ua.rtp_packets += 1

        self.rtp_transport, _ = await loop.create_datagram_endpoint(
            Rtp, local_addr=("127.0.0.1", 0)
        )
        return self

    @property
    def addr(self) -> tuple[str, int]:
        return self.transport.get_extra_info("sockname")

    @property
    def rtp_port(self) -> int:
        return self.rtp_transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sip.put_nowait(parse_message(data))

    def sdp(self, direction: str = "sendrecv") -> bytes:
        return (
            f"v=0\r\no=ua 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n"
        ).encode()

    def send(
        self, node: Node, method: str, cseq: int, to: str = TO, extra: str = "", body=b"", branch=""
    ) -> str:
        branch = branch or f"z9hG4bK{uuid.uuid4().hex[:12]}"
        host, port = self.addr
        data = (
            f"{method} sip:+15550000002@127.0.0.1:{node.sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:ua@{host}>;tag=ua1\r\nTo: {to}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:ua@{host}:{port}>\r\n{extra}"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.transport.sendto(data, ("127.0.0.1", node.sip_port))
        return branch

    async def next(self, timeout: float = 5.0) -> Request | Response:
        return await asyncio.wait_for(self.sip.get(), timeout)

    async def final(self, method: str, timeout: float = 5.0) -> Response:
        while True:
            msg = await self.next(timeout)
            if isinstance(msg, Response) and msg.status >= 200 and msg.cseq[1] == method:
                return msg

    async def request(self, method: str, timeout: float = 5.0) -> Request:
        while True:
            msg = await self.next(timeout)
            if isinstance(msg, Request) and msg.method == method:
                return msg

    async def answered_call(self, node: Node, qid: str) -> str:
        """INVITE, 200, ACK: the To of the dialog."""
        self.send(node, "INVITE", 1, extra=f"X-CallQueue-Id: {qid}\r\n", body=self.sdp())
        ok = await self.final("INVITE")
        assert ok.status == 200, ok.status
        to = f"{TO};tag={ok.to.tag}"
        self.send(node, "ACK", 1, to)
        return to

    def answer(self, request: Request, status: int = 200) -> None:
        r = (
            f"SIP/2.0 {status} OK\r\n"
            + "".join(f"Via: {v}\r\n" for v in request.headers.get_all("via"))
            + f"From: {request.headers.get('from')}\r\nTo: {request.headers.get('to')}\r\n"
            f"Call-ID: {request.call_id}\r\nCSeq: {request.headers.get('cseq')}\r\n"
            f"Content-Length: 0\r\n\r\n"
        )
        host, port = request.top_via.host, request.top_via.port
        self.transport.sendto(r.encode(), (host, port))

    def close(self) -> None:
        self.transport.close()
        self.rtp_transport.close()


def ended(n: Node, qid: str) -> dict[str, Any] | None:
    history = n.caught.history(qid)
    return history[-1][1] if history and history[-1][0] == "CallEnded" else None


def test_hold_stops_our_media_and_the_media_timeout_then_resume_restarts_both():
    async def test(n: Node) -> None:
        ua = await UA().open()
        n.assign("q-hold")
        to = await ua.answered_call(n, "q-hold")
        await n.until(lambda: ua.rtp_packets > 5)  # the greeting arrives
        ua.send(n, "INVITE", 2, to, body=ua.sdp("sendonly"))
        ok = await ua.final("INVITE")
        assert ok.status == 200 and b"a=recvonly" in ok.body
        ua.send(n, "ACK", 2, to)
        leg = n.node.sip.legs[ua.call_id]
        await n.until(lambda: leg.call.state is State.HELD)
        await asyncio.sleep(0.1)
        held_at = ua.rtp_packets
        await asyncio.sleep(0.8)  # longer than the 0.5 s media timeout: held calls wait
        assert ua.rtp_packets == held_at and leg.call.state is State.HELD
        ua.send(n, "INVITE", 3, to, body=ua.sdp("sendrecv"))
        assert (await ua.final("INVITE")).status == 200
        ua.send(n, "ACK", 3, to)
        await n.until(lambda: ua.rtp_packets > held_at + 5)  # our audio again
        bye = await ua.request("BYE", timeout=3)  # we send no RTP: media timeout
        ua.answer(bye)
        record = ended(n, "q-hold")
        assert record is not None and record["reason"] == "media_timeout"
        await n.until(lambda: ua.call_id not in n.node.sip.legs)
        ua.close()

    run(test, media_timeout_s=0.5)


def test_a_bye_from_the_caller_ends_the_call_and_a_new_one_gets_481():
    async def test(n: Node) -> None:
        ua = await UA().open()
        n.assign("q-bye")
        to = await ua.answered_call(n, "q-bye")
        await n.until(lambda: len(n.caught.history("q-bye")) == 2)
        ua.send(n, "BYE", 2, to)
        assert (await ua.final("BYE")).status == 200
        record = ended(n, "q-bye")
        assert record is not None
        assert (record["reason"], record["hangup_side"]) == ("completed", "caller")
        assert n.node.claims == {} and n.node.live == set()
        ua.send(n, "BYE", 3, to)  # a new request (new branch) for a dialog that is gone
        assert (await ua.final("BYE")).status == 481
        ua.close()

    run(test)


def test_a_ua_that_answers_our_bye_gets_it_once():
    async def test(n: Node) -> None:
        ua = await UA().open()
        n.assign("q-ans")
        await ua.answered_call(n, "q-ans")
        leg = n.node.sip.legs[ua.call_id]
        assert leg.agent is not None
        leg.agent.hang_up()  # the agent hangs up
        bye = await ua.request("BYE")
        ua.answer(bye)
        await n.until(lambda: leg.call.state is State.ENDED)
        record = ended(n, "q-ans")
        assert record is not None and record["hangup_side"] == "agent"
        try:
            again = await ua.request("BYE", timeout=1.0)
        except TimeoutError:
            again = None
        assert again is None  # answered: not retransmitted
        ua.close()

    run(test)


def test_a_cancel_without_an_invite_gets_481_and_a_used_entry_is_not_taken_again():
    async def test(n: Node) -> None:
        ua = await UA().open()
        ua.send(n, "CANCEL", 1)
        assert (await ua.final("CANCEL")).status == 481
        n.assign("q-once")
        to = await ua.answered_call(n, "q-once")
        ua.send(n, "BYE", 2, to)
        assert (await ua.final("BYE")).status == 200
        again = await UA().open()
        again.send(n, "INVITE", 1, extra="X-CallQueue-Id: q-once\r\n", body=again.sdp())
        refused = await again.final("INVITE")
        assert refused.status == 404  # the entry was used up by the call that ended
        ua.close()
        again.close()

    run(test, wait_s=0.2)


def test_cancel_during_the_wait_is_answered_and_the_call_ends_cancelled_when_assigned():
    async def test(n: Node) -> None:
        ua = await UA().open()
        branch = ua.send(n, "INVITE", 1, extra="X-CallQueue-Id: q-cx\r\n", body=ua.sdp())
        trying = await ua.next()
        assert isinstance(trying, Response) and trying.status == 100
        ua.send(n, "CANCEL", 1, branch=branch)
        cancel_ok, invite_487 = await ua.next(), await ua.next()
        assert isinstance(cancel_ok, Response) and isinstance(invite_487, Response)
        assert (cancel_ok.cseq[1], cancel_ok.status) == ("CANCEL", 200)
        assert (invite_487.cseq[1], invite_487.status) == ("INVITE", 487)
        ua.send(n, "ACK", 1, f"{TO};tag={invite_487.to.tag}", branch=branch)
        await asyncio.sleep(0.5)  # past the 0.2 s assignment wait: still waiting to report
        assert n.caught.history("q-cx") == []
        n.assign("q-cx")
        await n.until(lambda: ended(n, "q-cx") is not None)
        record = ended(n, "q-cx")
        assert record is not None
        assert (record["reason"], record["hangup_side"]) == ("cancelled", "caller")
        assert [name for name, _ in n.caught.history("q-cx")] == ["CallEnded"]
        assert n.node.live == set() and n.node.claims == {}
        ua.close()

    run(test, wait_s=0.2)


def test_an_offer_with_no_common_codec_is_refused_488_and_frees_the_entry():
    async def test(n: Node) -> None:
        ua = await UA().open()
        n.assign("q-488")
        body = ua.sdp().replace(b"RTP/AVP 0", b"RTP/AVP 18").replace(b"0 PCMU", b"18 G729")
        ua.send(n, "INVITE", 1, extra="X-CallQueue-Id: q-488\r\n", body=body)
        refused = await ua.final("INVITE")
        assert refused.status == 488
        assert n.node.claims == {} and n.node.entry("q-488") is not None
        ua.close()

    run(test)


def test_our_rtp_is_well_formed():
    async def test(n: Node) -> None:
        ua = await UA().open()
        got: list[RtpPacket] = []

        def keep(data: bytes, addr: Any) -> None:
            got.append(RtpPacket.parse(data))

        ua.rtp_transport.get_protocol().datagram_received = keep
        n.assign("q-rtp")
        await ua.answered_call(n, "q-rtp")
        await n.until(lambda: len(got) >= 3)
        assert {p.payload_type for p in got} == {0} and len(got[0].payload) == 160
        ua.close()

    run(test)
