"""Outbound calls through the REST API (`POST /v1/calls`, `GET /v1/calls/{id}`): what
`trunkline dial` does. The API key comes from the caller (the CLI reads `--api-key` or
`TRUNKLINE_API_KEY`); it is sent as `Authorization: Bearer` and never stored or printed."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trunkline.stack.base import BadInput, StackError

#: the API's final call states (the dialer's view) and the queue entry's final statuses
FINAL = frozenset({"ended", "failed", "refused", "Completed", "Failed", "Cancelled", "Rejected"})


@dataclass
class Dialed:
    call: dict[str, Any]  # the 201 body (then the latest GET)
    history: list[dict[str, Any]] = field(default_factory=list)  # every view polled


class ApiClient:
    def __init__(self, base_url: str, api_key: str, timeout: float = 120.0) -> None:
        if not api_key:
            raise BadInput("no API key: pass --api-key or set TRUNKLINE_API_KEY")
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ApiClient({self.base_url!r})"

    def request(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self._key}",
                "Content-Type": "application/json",
                **headers,
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                doc = json.loads(exc.read() or b"{}")
            except ValueError:
                doc = {}
            message = str(doc.get("error") or exc.reason)
            where = f" (field {doc['field']})" if doc.get("field") else ""
            retry = exc.headers.get("Retry-After")
            after = f"; retry after {retry} s" if retry else ""
            text = f"the API answered {exc.code}: {message}{where}{after}"
            if doc.get("id"):
                text += f" [call {doc['id']}]"
            raise (BadInput if exc.code == 400 else StackError)(text) from None
        except urllib.error.URLError as exc:
            raise StackError(f"the API at {self.base_url} did not answer: {exc.reason}") from exc


def dial(
    client: ApiClient,
    to: str,
    from_number_id: str,
    providers: list[str] | None = None,
    route_id: str | None = None,
    idempotency_key: str | None = None,
    wait: bool = False,
    wait_timeout: float = 300.0,
    on_view: Callable[[dict[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Dialed:
    """Place the call; with `wait`, poll it until it is over (or `wait_timeout`)."""
    body: dict[str, Any] = {"to": to, "fromNumberId": from_number_id}
    if providers:
        body["providers"] = providers
    if route_id:
        body["routeId"] = route_id
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    call = client.request("POST", "/v1/calls", body, **headers)
    out = Dialed(call, [call])
    if on_view:
        on_view(call)
    if not wait:
        return out
    deadline = clock() + wait_timeout
    while call.get("status") not in FINAL:
        if clock() > deadline:
            raise StackError(f"call {call.get('id')} not over after {wait_timeout:.0f} s")
        sleep(1.0)
        call = client.request("GET", f"/v1/calls/{out.call['id']}")
        out.call = call
        out.history.append(call)
        if on_view:
            on_view(call)
    return out
