"""End to end with baresip (Debian's baresip-core), a SIP phone we did not write: it calls
the edge, follows the 302 to the media node, plays a 440 Hz tone and records what it
hears; the recording must hold the greeting clip and then the echo of its own tone."""

from __future__ import annotations

import glob
import shutil
import subprocess
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from media.agents.greeting import GREETING
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


def write_tone(
    path: Path, seconds: float, freq: float = 440.0, rate: int = 8000, channels: int = 1
) -> None:
    t = np.arange(int(rate * seconds)) / rate
    pcm = np.repeat((np.sin(2 * np.pi * freq * t) * 6000).astype("<i2"), channels)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


@dataclass
class Heard:
    pcm: np.ndarray  # what baresip decoded, mono float samples
    rate: int
    log: str


#: codec -> (baresip module, its name in baresip's audio_codecs, the rate and channels
#: of its audio in baresip: aufile wants its input file at exactly these)
BARESIP_CODECS = {
    "PCMU": ("g711.so", "PCMU", 8000, 1),
    "G722": ("g722.so", "G722", 16000, 1),
    "OPUS": ("opus.so", "opus", 48000, 2),
}


def baresip_call(stack: Stack, tmp_path: Path, codec: str, seconds: float = 4.0) -> Heard:
    """baresip dials the edge offering only `codec`, follows the 302 to the media node,
    plays a 440 Hz tone for `seconds` and hangs up; returns what it heard."""
    module, name, rate, channels = BARESIP_CODECS[codec]
    write_tone(tmp_path / "input.wav", seconds, rate=rate, channels=channels)
    (tmp_path / "config").write_text(
        "poll_method epoll\n"
        # port 0: baresip's UDP, TCP and TLS listeners each get a free port (a fixed port
        # raced other processes for it, and its TLS listener for the port after it)
        "sip_listen 127.0.0.1:0\n"
        f"audio_player aufile,{tmp_path / 'out.wav'}\n"
        f"audio_source aufile,{tmp_path / 'input.wav'}\n"
        "audio_alert aufile,/dev/null\n"
        f"module_path /usr/lib/baresip/modules\nmodule {module}\nmodule aufile.so\n"
        "module sndfile.so\nmodule_app account.so\nmodule_app menu.so\n"
        f"snd_path {tmp_path}\n"
    )
    (tmp_path / "accounts").write_text(f"<sip:caller@127.0.0.1>;regint=0;audio_codecs={name}\n")
    edge = stack.edges["edge-a"]
    done = subprocess.run(
        [
            "baresip",
            "-f",
            str(tmp_path),
            "-e",
            f"/dial sip:+15550000002@127.0.0.1:{edge}",
            "-t",
            str(int(seconds + 6)),
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
        channels, rate = w.getnchannels(), w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(float)
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1)
    return Heard(pcm, rate, log)


def greeting_then_echo(heard: Heard, min_similarity: float = 0.9) -> None:
    """The recording starts with the greeting clip (correlated after alignment) and ends
    with the echo of baresip's own 440 Hz tone."""
    with wave.open(str(GREETING)) as w:
        clip = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(float)
        clip_rate = w.getframerate()
    pcm, rate = heard.pcm, heard.rate
    if rate != clip_rate:  # compare at 8 kHz or the clip's rate, whichever is lower
        common = min(rate, clip_rate)
        assert rate % common == 0 and clip_rate % common == 0, (rate, clip_rate)
        pcm, clip, rate = pcm[:: rate // common], clip[:: clip_rate // common], common
    window = pcm[: len(clip) + rate // 2]
    best = int(np.argmax(np.correlate(window, clip, mode="valid")))
    aligned = window[best : best + len(clip)]
    similarity = np.dot(aligned, clip) / (np.linalg.norm(aligned) * np.linalg.norm(clip))
    assert similarity > min_similarity, similarity
    tail = pcm[-rate:]
    spectrum = np.abs(np.fft.rfft(tail * np.hanning(len(tail))))
    assert np.fft.rfftfreq(len(tail), 1 / rate)[int(np.argmax(spectrum))] == pytest.approx(
        440, abs=10
    )


def call_ids(stack: Stack) -> set[str]:
    return {r["id"] for r in stack.sink.get("/calls/?business=b-main&limit=1000")}


def completed_entry(stack: Stack, before: set[str]) -> dict:
    """The queue entry of the call that is new since `before`, once it is Completed."""
    rows = stack.sink.poll(
        "/calls/?business=b-main&limit=1000",
        lambda rs: any(r["status"] == "Completed" and r["id"] not in before for r in rs),
        timeout=20,
    )
    [new] = [r["id"] for r in rows if r["id"] not in before]
    return stack.sink.get(f"/calls/{new}/")


def test_baresip_calls_through_the_redirect_and_hears_greeting_and_echo(stack, tmp_path):
    before = call_ids(stack)
    heard = baresip_call(stack, tmp_path, "PCMU")
    assert heard.rate == 8000
    greeting_then_echo(heard)
    entry = completed_entry(stack, before)
    assert entry["hangupSide"] == "caller" and entry["talkMs"] >= 3000
    assert entry["media"]["packetsReceived"] >= 150
    assert entry["codec"] == "PCMU/8000"
    stack.worker.poll("/state/admission-active/", lambda a: a.get("b-main", []) == [])


@pytest.mark.parametrize(("codec", "rate"), [("G722", 16000), ("OPUS", 48000)])
def test_baresip_wideband_call_both_ways_with_the_negotiated_codec(stack, tmp_path, codec, rate):
    """baresip offers only G.722 (or only Opus): the media node answers with it, both
    directions carry it (baresip decodes the greeting and the echo at the codec's rate,
    the node decodes baresip's tone to echo it), and the history records the codec."""
    before = call_ids(stack)
    heard = baresip_call(stack, tmp_path, codec)
    assert heard.rate == rate
    _, name, _, channels = BARESIP_CODECS[codec]
    for way in ("encoder", "decoder"):  # baresip's own view of the negotiated stream
        assert f"Set audio {way}: {name} {rate}Hz {channels}ch" in heard.log
    greeting_then_echo(heard)
    entry = completed_entry(stack, before)
    assert entry["codec"].split("/")[0].upper() == codec, entry["codec"]
    assert entry["hangupSide"] == "caller" and entry["talkMs"] >= 3000
    assert entry["media"]["packetsReceived"] >= 150 and entry["media"]["packetsSent"] >= 150
    stack.worker.poll("/state/admission-active/", lambda a: a.get("b-main", []) == [])
