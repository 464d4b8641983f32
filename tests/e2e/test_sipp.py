"""End to end with SIPp (Debian's sip-tester), a SIP peer we did not write, against the
running edge over UDP and TCP: INVITE, 100, 302 with X-CallQueue-Id in the Contact, ACK."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
SCENARIO = Path(__file__).resolve().parent / "scenarios" / "invite_302.xml"


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("sipp") is None:
        pytest.fail("sipp is not installed (apt-get install sip-tester); scripts/setup does it")
    with running_stack(kafka_bootstrap, tmp_path_factory.mktemp("e2e"), edges=("edge-a",)) as s:
        yield s


@pytest.mark.parametrize(("transport", "flag"), [("UDP", "u1"), ("TCP", "t1")])
def test_sipp_invite_302_ack(stack, tmp_path, transport, flag):
    port = stack.edges["edge-a"]
    calls = 5
    proc = subprocess.run(
        [
            "sipp",
            "-sf",
            str(SCENARIO),
            "-s",
            "+15550000002",
            f"127.0.0.1:{port}",
            "-t",
            flag,
            "-m",
            str(calls),
            "-r",
            "10",
            "-l",
            "5",
            "-timeout",
            "30s",
            "-timeout_error",
            "-nostdin",
            "-trace_logs",
            "-log_file",
            str(tmp_path / "log.txt"),
            "-trace_err",
            "-error_file",
            str(tmp_path / "err.txt"),
            "-i",
            "127.0.0.1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    errors = (tmp_path / "err.txt").read_text() if (tmp_path / "err.txt").exists() else ""
    assert proc.returncode == 0, f"sipp exit {proc.returncode}\n{proc.stdout[-2000:]}\n{errors}"
    log = (tmp_path / "log.txt").read_text()
    queue_ids = re.findall(r"queue X-CallQueue-Id=([-0-9a-f]+)", log)
    assert len(queue_ids) == calls and len(set(queue_ids)) == calls
    # every queue id is a call the pipeline routed to backend-1
    for qid in queue_ids:
        entry = stack.sink.poll(
            f"/calls/{qid}/", lambda e: isinstance(e, dict) and e.get("status") == "ProcessedProxy"
        )
        assert entry["processingBackendServerId"] == "backend-1"
        assert entry["logs"][0]["message"].endswith(f"(SIP {transport}) to +15550000002")
