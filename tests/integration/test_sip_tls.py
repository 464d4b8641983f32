"""SIP over TLS at the edge, with a certificate from a throwaway CA (trustme): a UAC that
trusts the CA calls over TLS and gets its 302 there (a `sips:` call keeps `sips:` in the
Contact, as the edge copies the Request-URI's scheme), the history records the TLS
transport, and a failed TLS handshake costs only its own connection."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest
import trustme

from edge.sip.message import NameAddr
from edge.sip.uac import UAC, Call
from tests.harness import free_port
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA
) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "edge.trunkline.test")
    cert.private_key_pem.write_to_path(str(state / "edge.key"))
    cert.cert_chain_pems[0].write_to_path(str(state / "edge.pem"))
    for extra in cert.cert_chain_pems[1:]:
        with open(state / "edge.pem", "ab") as out:
            out.write(extra.bytes())
    tls_port = free_port()
    args = (
        "--tls-listen",
        f"127.0.0.1:{tls_port}",
        "--tls-cert",
        str(state / "edge.pem"),
        "--tls-key",
        str(state / "edge.key"),
    )
    with running_stack(kafka_bootstrap, state, edges=("edge-a",), edge_args={"edge-a": args}) as s:
        s.edges["edge-a-tls"] = tls_port
        yield s


def _client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def _tls_uac(stack: Stack, ca: trustme.CA) -> UAC:
    return UAC("127.0.0.1", stack.edges["edge-a-tls"], "TLS", tls=_client_context(ca))


def _redirect(call: Call) -> NameAddr:
    assert call.final is not None and call.final.status == 302, call.responses
    return NameAddr.parse(call.final.headers.get("contact") or "")


@pytest.mark.parametrize("scheme", ["sips", "sip"])
def test_a_call_over_tls_is_redirected_over_tls(stack, ca, scheme):
    uac = _tls_uac(stack, ca)
    assert uac.sock.version() in ("TLSv1.2", "TLSv1.3")
    call = Call("+15550000002", scheme=scheme)
    final = uac.invite(call)
    assert [r.status for r in call.responses] == [100, 302]
    assert final.top_via.transport == "TLS"
    contact = _redirect(call).uri
    assert (contact.scheme, contact.user, contact.host, contact.port) == (
        scheme,
        "+15550000002",
        "127.0.0.1",
        5070,
    )
    queue_id = contact.headers["X-CallQueue-Id"]
    assert final.headers.get("x-callqueue-id") == queue_id
    uac.close()
    entry = stack.sink.poll(
        f"/calls/{queue_id}/", lambda e: isinstance(e, dict) and e.get("status") == "ProcessedProxy"
    )
    assert entry["providerCallId"] == call.call_id
    assert entry["logs"][0]["message"].endswith("(SIP TLS) to +15550000002")


def _closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True once the peer closed the connection (EOF or reset) within the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if sock.recv(4096) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def test_a_failed_tls_handshake_costs_only_its_own_connection(stack, ca):
    # a caller already talking over TLS...
    steady = _tls_uac(stack, ca)
    first = Call("+15550000002")
    assert steady.invite(first).status == 302
    port = stack.edges["edge-a-tls"]
    # ...while one client speaks plain SIP to the TLS port (the edge's handshake fails)
    builder = UAC("127.0.0.1", port, "UDP")
    invite = builder.build("INVITE", Call("+15550000002")).replace(b"/UDP ", b"/TLS ")
    builder.close()
    plain = socket.create_connection(("127.0.0.1", port), timeout=10)
    plain.sendall(invite)
    assert _closed_by_peer(plain)
    plain.close()
    # ...and another does not trust the edge's certificate (its own handshake fails)
    stranger = trustme.CA()
    with pytest.raises(ssl.SSLCertVerificationError):
        UAC("127.0.0.1", port, "TLS", tls=_client_context(stranger))
    # ...and a third stalls half-way through its ClientHello (and stays connected)
    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
    stalled.sendall(b"\x16\x03\x01\x00\xff\x01")  # a record header, 1 byte of 255
    # the open connection still carries calls, a new TLS connection gets in, UDP still
    # answers, and the edge is alive
    second = Call("+15550000002")
    assert steady.invite(second).status == 302
    steady.close()
    fresh = _tls_uac(stack, ca)
    assert fresh.invite(Call("+15550000002")).status == 302
    fresh.close()
    udp = stack.uac()
    assert udp.invite(Call("+15550000002")).status == 302
    udp.close()
    assert all(p.poll() is None for p in stack.procs)
    stalled.close()
