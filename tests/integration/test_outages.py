"""A broker that goes away and comes back, on a private broker this module starts (the
shared one must never stop): the ClickHouse sink outlives an outage longer than its
session, quietly, and loses nothing; a broker restart under load ends no live call, frees
no slot a live call holds and refuses no call for want of a live backend."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from schemas import SingleObjectCodec
from tests.harness import Sink, free_port
from tests.load import Load
from tests.samples import sample
from tests.stack import roomy_config, running_stack
from trunkline.core import kafka_local
from trunkline.core.admin import apply_all
from trunkline.core.kafka import Outgoing, make_producer, publish_all
from trunkline.core.settings import Settings
from trunkline.core.topics import CALL_EVENTS

pytestmark = pytest.mark.integration
CODEC = SingleObjectCodec()
SESSION_TIMEOUT_S = 10  # the sink's and the worker's consumer groups


@dataclass
class Broker:
    paths: kafka_local.BrokerPaths
    cache: Path
    port: int
    controller: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def restart(self, away: float) -> float:
        """Stop the broker, keep it away at least `away` seconds, start it again; return
        how long it was away (starting a JVM on a busy machine takes a while)."""
        stopped = time.monotonic()
        kafka_local.stop(self.paths)
        time.sleep(max(0.0, away - (time.monotonic() - stopped)))
        kafka_local.start(self.paths, self.cache, self.port, self.controller)
        return time.monotonic() - stopped


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    cache = Path(os.environ.get("TRUNKLINE_CACHE_DIR") or Path.home() / ".cache" / "trunkline")
    b = Broker(
        kafka_local.BrokerPaths(tmp_path_factory.mktemp("private-kafka")),
        cache,
        free_port(),
        free_port(),
    )
    kafka_local.start(b.paths, b.cache, b.port, b.controller)
    try:
        yield b
    finally:
        kafka_local.stop(b.paths)


def offers(s: Settings, call_ids: list[str]) -> None:
    topic = CALL_EVENTS.name(s.topic_prefix)
    publish_all(
        make_producer(s.kafka_bootstrap),
        [
            Outgoing(topic, c.encode(), CODEC.encode("CallOffered", sample("CallOffered", c)))
            for c in call_ids
        ],
    )


def history(bootstrap: str, topic: str) -> list[tuple[str, dict]]:
    """Every record of `topic`, decoded."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "history-probe"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in parts:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        out = []
        while ends:
            m = c.poll(10)
            assert m is not None, f"timed out reading {topic}"
            if m.error():
                continue
            out.append(CODEC.decode(m.value()))
            if m.offset() + 1 >= ends.get(m.partition(), 0):
                ends.pop(m.partition(), None)
        return out
    finally:
        c.close()


def test_the_sink_outlives_an_outage_longer_than_its_session_quietly(broker, tmp_path):
    """The broker away longer than the sink's session (the group coordinator goes with it):
    the sink keeps running, says so a few times instead of once per retry, and stores
    everything produced before and after."""
    s = Settings.from_env(
        {
            "TRUNKLINE_STATE_DIR": str(tmp_path / "state"),
            "TRUNKLINE_KAFKA_BOOTSTRAP": broker.bootstrap,
            "TRUNKLINE_TOPIC_PREFIX": "sink-outage.",
            "TRUNKLINE_APP_ID": "sink-outage",
            "TRUNKLINE_SINK_WEB_PORT": str(free_port()),
        }
    )
    apply_all(s.kafka_bootstrap, s.topic_prefix, s.app_id)
    sink = Sink(s)
    sink.start()
    try:
        before = [f"q-before-{i}" for i in range(200)]
        offers(s, before)
        sink.poll("/events/counts/", lambda b: b.get("CallOffered") == 200, timeout=30)
        assert sink.log is not None
        lines_before = len(sink.log.read_text(errors="replace").splitlines())
        away = broker.restart(away=SESSION_TIMEOUT_S + 3)
        assert sink.proc is not None and sink.proc.poll() is None, sink.log_tail()
        after = [f"q-after-{i}" for i in range(200)]
        offers(s, after)
        sink.poll("/events/counts/", lambda b: b.get("CallOffered") == 400, timeout=60)
        health = sink.get("/health/")["sink"]
        assert health["alive"] and health["dead_lettered"] == 0
        assert sink.get("/calls/q-before-0/")["status"] == "Queued"
        logged = sink.log.read_text(errors="replace").splitlines()[lines_before:]
        # a line every few seconds while it waits, not one per attempt
        assert len(logged) <= 10 + away / 2, "\n".join(logged[-40:])
    finally:
        sink.stop()


def test_a_broker_restart_under_load_ends_no_live_call(broker, tmp_path):
    """Calls keep coming while the broker restarts. Afterwards every call that got its
    302 still holds its plan slot (admission-active) and its backend slot (routing-held),
    none was ended backend_lost, and none was refused for want of a live backend: the
    heartbeat publisher never stopped; only the pipe did."""
    config = roomy_config(100_000)
    env = {"TRUNKLINE_HEARTBEAT_TIMEOUT_MS": "3000", "TRUNKLINE_REDIRECT_TIMEOUT_MS": "600000"}
    with running_stack(
        broker.bootstrap, tmp_path, edges=("edge-a",), env=env, config=config, capacity=100_000
    ) as s:
        load = Load(s.uac(), "+15550000002", rate=20).start()
        try:
            deadline = time.monotonic() + 20
            while len(load.routed) < 20:
                assert time.monotonic() < deadline, load.finals
                time.sleep(0.1)
            broker.restart(away=6)  # longer than the heartbeat timeout
            back = time.time()
            # past the grace (the heartbeat timeout after the first tick), with calls
            # routed again
            deadline = time.monotonic() + 60
            while not any(t > back + 5 for t in load.routed.values()):
                assert time.monotonic() < deadline, load.finals
                time.sleep(0.2)
        finally:
            load.stop()
        live = set(load.routed)
        assert load.unanswered == 0
        assert "no live backend with room" not in load.warnings, load.warnings
        topic = CALL_EVENTS.name(s.settings.topic_prefix)
        ended = Counter(
            (r["envelope"]["producer_id"], r["reason"])
            for name, r in history(s.settings.kafka_bootstrap, topic)
            if name == "CallEnded" and r["envelope"]["call_id"] in live
        )
        assert not ended, ended
        s.worker.poll(
            "/state/admission-active/", lambda b: set(b.get("b-main", [])) == live, timeout=30
        )
        assert s.worker.get("/state/routing-held/")["backend-1"] == len(live)


def test_the_media_node_and_the_webhook_edge_outlive_a_60_s_outage(broker, tmp_path):
    """The broker away 60 s: the media node and the webhook edge keep running (nobody
    restarts them), and afterwards a SIP call is answered by the media node again and a
    Twilio voice webhook gets its <Stream> answer."""
    import requests
    from twilio.request_validator import RequestValidator

    from media.caller import place_call
    from tests.integration.test_webhook import SECRETS, _config, start_webhook_edge, voice

    with running_stack(
        broker.bootstrap,
        tmp_path,
        edges=("edge-a",),
        media=True,
        config=_config("http://127.0.0.1:9"),  # Telnyx's API is not used here
    ) as s:
        proc, url, log = start_webhook_edge(s, SECRETS)
        node = s.named["backend-1"]
        try:

            def twilio_answer() -> requests.Response:
                params = voice(f"CA{time.time_ns():032x}")
                sig = RequestValidator(SECRETS["TL_TEST_TWILIO_TOKEN"]).compute_signature(
                    f"{url}/webhooks/twilio/voice", params
                )
                return requests.post(
                    f"{url}/webhooks/twilio/voice",
                    data=params,
                    headers={"X-Twilio-Signature": sig},
                    timeout=30,
                )

            def works() -> bool:
                call = place_call("127.0.0.1", s.edges["edge-a"], "+15550000002", seconds=0.5)
                try:
                    answer = twilio_answer()
                except requests.ConnectionError:  # not listening yet
                    return False
                return (
                    call.answer is not None
                    and call.answer.status == 200
                    and answer.status_code == 200
                    and "<Stream" in answer.text
                )

            deadline = time.monotonic() + 60
            while not works():  # the webhook edge's first answer waits for its start
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            away = broker.restart(away=60)
            assert away >= 60
            assert node.poll() is None, "the media node exited during the outage"
            assert proc.poll() is None, log.read_text()[-3000:]
            deadline = time.monotonic() + 90
            while not works():
                assert node.poll() is None and proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no call through within 90 s of the return"
                time.sleep(1.0)
        finally:
            proc.terminate()
            proc.wait(10)
