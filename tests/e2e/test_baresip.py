"""End to end with baresip (Debian's baresip-core), a SIP phone we did not write: it calls
the edge, follows the 302 to the media node, plays a 440 Hz tone and records what it
hears; the recording must hold the greeting clip and then the echo of its own tone."""

from __future__ import annotations

import glob
import shutil
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from media.agents.greeting import GREETING
from tests.harness import free_port
from tests.stack import Stack, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("baresip") is None:
        pytest.fail(
            "baresip is not installed (apt-get install baresip-core); scripts/setup does it"
        )
    with running_stack(
        kafka_bootstrap, tmp_path_factory.mktemp("baresip"), edges=("edge-a",), media=True
    ) as s:
        s.worker.poll("/state/routing-heartbeats/", lambda b: "backend-1" in b, timeout=30)
        yield s


def write_tone(path: Path, seconds: float, freq: float = 440.0, rate: int = 8000) -> None:
    t = np.arange(int(rate * seconds)) / rate
    pcm = (np.sin(2 * np.pi * freq * t) * 6000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def test_baresip_calls_through_the_redirect_and_hears_greeting_and_echo(stack, tmp_path):
    write_tone(tmp_path / "input.wav", 4.0)
    port = free_port()
    (tmp_path / "config").write_text(
        "poll_method epoll\n"
        f"sip_listen 127.0.0.1:{port}\n"
        f"audio_player aufile,{tmp_path / 'out.wav'}\n"
        f"audio_source aufile,{tmp_path / 'input.wav'}\n"
        "audio_alert aufile,/dev/null\naudio_srate 8000\naudio_channels 1\n"
        "module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\n"
        "module sndfile.so\nmodule_app account.so\nmodule_app menu.so\n"
        f"snd_path {tmp_path}\n"
    )
    (tmp_path / "accounts").write_text(
        f"<sip:caller@127.0.0.1:{port}>;regint=0;audio_codecs=PCMU\n"
    )
    edge = stack.edges["edge-a"]
    done = subprocess.run(
        [
            "baresip",
            "-f",
            str(tmp_path),
            "-e",
            f"/dial sip:+15550000002@127.0.0.1:{edge}",
            "-t",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    log = done.stdout + done.stderr
    assert "Call established" in log, log[-3000:]
    assert "terminated" in log  # baresip hung up when its input file ended
    [recording] = glob.glob(str(tmp_path / "dump-*-dec.wav"))
    with wave.open(recording) as w:
        heard = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(float)
    with wave.open(str(GREETING)) as w:
        clip = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(float)[::2]
    window = heard[: len(clip) + 4000]
    best = int(np.argmax(np.correlate(window, clip, mode="valid")))
    aligned = window[best : best + len(clip)]
    assert np.dot(aligned, clip) / (np.linalg.norm(aligned) * np.linalg.norm(clip)) > 0.9
    tail = heard[-8000:]
    spectrum = np.abs(np.fft.rfft(tail * np.hanning(len(tail))))
    assert np.fft.rfftfreq(len(tail), 1 / 8000)[int(np.argmax(spectrum))] == pytest.approx(
        440, abs=10
    )
    rows = stack.sink.poll(
        "/calls/?business=b-main",
        lambda rs: any(r["status"] == "Completed" for r in rs),
        timeout=20,
    )
    entry = stack.sink.get(f"/calls/{next(r['id'] for r in rows if r['status'] == 'Completed')}/")
    assert entry["hangupSide"] == "caller" and entry["talkMs"] >= 3000
    assert entry["media"]["packetsReceived"] >= 150
    stack.worker.poll("/state/admission-active/", lambda a: a.get("b-main", []) == [])
