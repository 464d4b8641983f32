"""Calls at a steady rate through a SIP edge, for the tests that break things under load
(a broker restart, a worker killed): who got which final answer, by queue id."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from edge.sip.message import NameAddr
from edge.sip.uac import UAC, Call


@dataclass
class Load:
    """INVITEs for `number` at `rate` per second until `stop()`; every final answer is
    ACKed and kept. `routed` maps the queue id of each 302 to when it came."""

    uac: UAC
    number: str
    rate: float = 20.0
    routed: dict[str, float] = field(default_factory=dict)
    finals: Counter[int] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    #: SIP Call-ID -> final status, and each final answer's INVITE -> final time (ms)
    answered: dict[str, int] = field(default_factory=dict)
    offered: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    #: (when the INVITE was sent, time.monotonic(); its INVITE -> final ms), as answered
    timeline: list[tuple[float, float]] = field(default_factory=list)
    #: calls refused at the door while the broker was away (503 "event log unavailable":
    #: nothing was published, so the history has no trace of them, by design)
    unlogged: set[str] = field(default_factory=set)
    _sent_at: dict[str, float] = field(default_factory=dict)
    _pending: dict[str, Call] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_at:
                call = Call(self.number)
                self._pending[call.call_id] = call
                self._sent_at[call.call_id] = time.monotonic()
                self.offered.append(call.call_id)
                try:
                    self.uac.request("INVITE", call)
                except OSError:  # the edge is away (a chaos scenario killed it)
                    pass
                self.sent += 1
                next_at += interval
            self._receive(max(0.001, min(0.02, next_at - time.monotonic())))
        deadline = time.monotonic() + 15  # the edge answers every INVITE within its timeout
        while self._pending and time.monotonic() < deadline:
            self._receive(0.1)

    def _receive(self, timeout: float) -> None:
        try:
            r = self.uac.receive(timeout)
        except OSError:  # ICMP port unreachable while the edge is away
            return
        if r is None or r.status < 200 or r.cseq[1] != "INVITE":
            return
        call = self._pending.pop(r.call_id, None)
        if call is None:
            return
        call.responses.append(r)
        try:
            self.uac.ack(call)
        except OSError:
            pass
        self.finals[r.status] += 1
        self.answered[r.call_id] = r.status
        sent_at = self._sent_at.pop(r.call_id)
        self.latencies_ms.append((time.monotonic() - sent_at) * 1000)
        self.timeline.append((sent_at, self.latencies_ms[-1]))
        if r.status == 302:
            queue_id = NameAddr.parse(r.headers.get("contact")).uri.headers["X-CallQueue-Id"]
            self.routed[queue_id] = time.time()
        elif warning := r.headers.get("warning"):
            why = warning.split('"')[1].split(" in region")[0]
            self.warnings[why] += 1
            if why == "event log unavailable":
                self.unlogged.add(r.call_id)

    def stop(self) -> None:
        """Stop sending; return once every INVITE sent has its final answer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.uac.close()

    @property
    def unanswered(self) -> int:
        return len(self._pending)
