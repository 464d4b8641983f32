"""`trunkline dial` over `trunkline.stack.dial`: the request it sends, `--wait` following
the call to its end on a hand-held clock, and a missing key refused before anything is
sent."""

from __future__ import annotations

from typing import Any

import pytest

from trunkline.cli.main import main
from trunkline.stack.base import BadInput, StackError
from trunkline.stack.dial import ApiClient, dial


class FakeApi(ApiClient):
    def __init__(self, views: list[dict[str, Any]]) -> None:
        super().__init__("http://api.test", "k")
        self.views = views
        self.sent: list[tuple[str, str, Any, dict[str, str]]] = []

    def request(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        self.sent.append((method, path, body, headers))
        return self.views.pop(0)


def view(status: str, *attempts: dict[str, Any]) -> dict[str, Any]:
    return {"id": "q-1", "status": status, "backend": "backend-1", "attempts": list(attempts)}


def test_dial_sends_the_request_and_follows_the_call_until_it_is_over():
    placed = {"attempt": 1, "provider": "twilio-main", "providerKind": "twilio",
              "outcome": "placed", "providerCallId": "CA1"}  # fmt: skip
    api = FakeApi([view("attempting", placed), view("ringing", placed),
                   view("Completed", placed)])  # fmt: skip
    now = [0.0]
    seen: list[str] = []
    out = dial(api, "+4915112345678", "tw-1", ["twilio-main"], None, "order-1", wait=True,
               on_view=lambda v: seen.append(v["status"]), clock=lambda: now[0],
               sleep=lambda s: now.__setitem__(0, now[0] + s))  # fmt: skip
    assert api.sent[0] == (
        "POST", "/v1/calls",
        {"to": "+4915112345678", "fromNumberId": "tw-1", "providers": ["twilio-main"]},
        {"Idempotency-Key": "order-1"},
    )  # fmt: skip
    assert [s[1] for s in api.sent[1:]] == ["/v1/calls/q-1", "/v1/calls/q-1"]
    assert seen == ["attempting", "ringing", "Completed"]
    assert out.call["status"] == "Completed"


def test_dial_wait_gives_up_at_its_deadline():
    api = FakeApi([view("attempting")] + [view("ringing")] * 10)
    now = [0.0]
    with pytest.raises(StackError, match="not over after 3 s"):
        dial(api, "+4915112345678", "tw-1", wait=True, wait_timeout=3,
             clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))  # fmt: skip


def test_no_key_is_bad_input(monkeypatch, capsys):
    with pytest.raises(BadInput):
        ApiClient("http://api.test", "")
    monkeypatch.delenv("TRUNKLINE_API_KEY", raising=False)
    assert main(["dial", "+4915112345678", "--from", "tw-1", "--api", "http://127.0.0.1:9"]) == 2
    assert "TRUNKLINE_API_KEY" in capsys.readouterr().err
