"""Flood control on a real stack: one source floods the edge with INVITEs; it gets next
to nothing back, and a trunk's calls still get their 302."""

from __future__ import annotations

import json
import threading
import time

import pytest

from edge.sip.uac import UAC, Call
from tests.stack import CONFIG, running_stack

pytestmark = pytest.mark.integration

FLOOD_RATE = 2000  # INVITEs a second from the flooding source
FLOOD_SECONDS = 3.0


def test_a_flooding_source_is_dropped_and_a_trunk_still_gets_its_302s(kafka_bootstrap, tmp_path):
    config = json.loads(json.dumps(CONFIG))
    for number in config["numbers"]:  # the trunk is 127.0.0.1; 127.0.0.2 is a stranger
        if number.get("allowedSourceIps") == ["127.0.0.0/8"]:
            number["allowedSourceIps"] = ["127.0.0.1"]
    env = {"TRUNKLINE_SIP_FLOOD_RATE": "50"}
    with running_stack(kafka_bootstrap, tmp_path, edges=("edge-a",), config=config, env=env) as s:
        port = s.edges["edge-a"]
        stranger = UAC("127.0.0.1", port, bind="127.0.0.2")
        flooder = stranger.sock
        stop = threading.Event()
        sent = 0

        def flood() -> None:
            nonlocal sent
            started = time.monotonic()
            while not stop.is_set() and time.monotonic() - started < FLOOD_SECONDS:
                # never ACKed, each a new transaction (new Call-ID and branch)
                flooder.sendto(stranger.build("INVITE", Call("+15550000002")), ("127.0.0.1", port))
                sent += 1
                if sent % 20 == 0:  # paced in bursts of 20, without spinning on a core
                    time.sleep(max(0.0, started + sent / FLOOD_RATE - time.monotonic()))

        thread = threading.Thread(target=flood)
        thread.start()
        trunk = s.uac()
        finals = []
        while thread.is_alive():
            call = Call("+15550000002")
            final = trunk.invite(call, timeout=3)  # b-main's plan has room for 50
            finals.append(final.status if final else None)
            if len(finals) >= 40:
                break
        thread.join()
        # count what came back to the stranger (its answers queued in the socket buffer)
        flooder.setblocking(True)
        flooder.settimeout(2.0)
        answers = 0
        try:
            while True:
                flooder.recv(65535)
                answers += 1
        except TimeoutError:
            pass
        flooder.close()
        trunk.close()
    print(f"flood: sent {sent}, answered {answers}; trunk finals {len(finals)}")
    assert sent >= FLOOD_RATE * FLOOD_SECONDS * 0.5
    assert finals and all(status == 302 for status in finals), finals
    # the stranger's burst (30) was answered (a 100 and a final each, plus the few
    # retransmissions its budget allows); the rest was dropped silently
    assert answers <= 2 * 30 + 20 * (FLOOD_SECONDS + 32), answers
    assert answers < sent / 5
