"""Stand-ins for the providers' REST APIs, for the outbound tests and bench.outbound:

- `Prism`: Stoplight Prism (`.tools/`, installed by scripts/setup) mocking Twilio's REST
  API from Twilio's own OpenAPI description (`@twilio/cli-core`'s
  `twilio_api_v2010.json`), `--errors` on: a request that does not match Twilio's spec gets
  422. One patch to the spec: `StatusCallbackEvent` is declared an array without an
  `encoding`, and Prism then refuses the repeated form fields Twilio's SDK (and Twilio's
  own docs) send for it ("must be array"); the patch declares it `style: form, explode:
  true`, which is what the SDK does.
- `Recorder`: an aiohttp server that records every request (path, headers, form or JSON
  body) and answers from a handler: forwarding to Prism (so the test can read the TwiML
  we sent), or as a Telnyx / Vonage / failing Twilio API.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web

from tests.harness import free_port

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / ".tools" / "node_modules"
PRISM = TOOLS / ".bin" / "prism"
TWILIO_SPEC = (
    TOOLS / "@twilio" / "cli-core" / "src" / "services" / "twilio-api" / "twilio_api_v2010.json"
)
CALLS = "/2010-04-01/Accounts/{AccountSid}/Calls.json"


def patched_twilio_spec(target: Path) -> Path:
    spec = json.loads(TWILIO_SPEC.read_text())
    form = spec["paths"][CALLS]["post"]["requestBody"]["content"][
        "application/x-www-form-urlencoded"
    ]
    form["encoding"] = {"StatusCallbackEvent": {"style": "form", "explode": True}}
    target.write_text(json.dumps(spec))
    return target


class Prism:
    """`prism mock <patched Twilio spec> -p PORT --errors` on a free port."""

    def __init__(self, workdir: Path) -> None:
        assert PRISM.exists() and TWILIO_SPEC.exists(), "run scripts/setup (installs Prism)"
        self.port = free_port()
        self.log = workdir / "prism.log"
        spec = patched_twilio_spec(workdir / "twilio_api_v2010.json")
        self.proc = subprocess.Popen(
            [str(PRISM), "mock", str(spec), "-p", str(self.port), "-h", "127.0.0.1", "--errors"],
            stdout=open(self.log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while "Prism is listening" not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "Prism did not start: " + self.log.read_text()
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


Handler = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


@dataclass
class Recorder:
    """Records each request, then answers with `handler(request, recorded)`."""

    handler: Handler
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Recorder:
        ready = threading.Event()

        async def any_request(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            if request.content_type == "application/x-www-form-urlencoded":
                body: Any = parse_qsl(raw.decode(), keep_blank_values=True)
            elif raw:
                body = json.loads(raw)
            else:
                body = None
            recorded = {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": body,
                "raw": raw,
            }
            self.requests.append(recorded)
            return await self.handler(request, recorded)

        async def serve() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", any_request)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            ready.set()
            await asyncio.Event().wait()

        threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
        assert ready.wait(10)
        return self

    def posts(self, path_part: str = "") -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST" and path_part in r["path"]]


def forward_to(upstream: str) -> Handler:
    """Forward the request as it came (to Prism) and answer with what came back."""

    async def handler(request: web.Request, recorded: dict[str, Any]) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",
                   "content-length", "transfer-encoding")}  # fmt: skip
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, upstream + request.path_qs, data=recorded["raw"], headers=headers
            ) as resp,
        ):
            body = await resp.read()
            recorded["answer"] = resp.status
            return web.Response(status=resp.status, body=body,
                                content_type=resp.content_type)  # fmt: skip

    return handler


def fixed(status: int, doc: dict[str, Any]) -> Handler:
    async def handler(request: web.Request, recorded: dict[str, Any]) -> web.Response:
        return web.json_response(doc, status=status)

    return handler


def telnyx_api(hold: set[str] | None = None) -> Handler:
    """Telnyx's dial: a call_control_id per command_id (a repeat gets the same call, as
    Telnyx drops a repeated command_id). A dial whose `to` is in `hold` gets no answer
    the first time (its connection is left hanging: a timed-out request)."""
    made: dict[str, str] = {}
    held = hold if hold is not None else set()

    async def handler(request: web.Request, recorded: dict[str, Any]) -> web.Response:
        if request.path != "/v2/calls":
            return web.json_response({"data": {"result": "ok"}})
        body = recorded["body"]
        command = body.get("command_id") or str(len(made))
        made.setdefault(command, f"v3:outbound-{len(made) + 1}")
        if body.get("to") in held:
            held.discard(body["to"])
            await asyncio.sleep(3600)
        return web.json_response(
            {
                "data": {
                    "call_control_id": made[command],
                    "call_leg_id": f"leg-{made[command]}",
                    "call_session_id": f"session-{made[command]}",
                    "is_alive": False,
                    "record_type": "call",
                }
            }
        )

    return handler


def vonage_api() -> Handler:
    async def handler(request: web.Request, recorded: dict[str, Any]) -> web.Response:
        n = len(recorded) + len(str(time.monotonic()))
        return web.json_response(
            {"uuid": f"vonage-call-{n}", "status": "started", "direction": "outbound",
             "conversation_uuid": f"CON-{n}"},
            status=201,
        )  # fmt: skip

    return handler
