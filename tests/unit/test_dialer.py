"""The dialer's failover machine on a hand-held clock: every (state, input) pair of its
table, each path of the issue (failover on connect errors, 429/5xx, auth, asynchronous
infrastructure failures; none on user outcomes or invalid numbers; ambiguous timeouts),
the API's answers, slots freed once, and a rebuild from the journal after a restart."""

from __future__ import annotations

import itertools

import pytest

from edge.dialer import providers as pv
from edge.dialer.machine import (
    TRANSITIONS,
    Dial,
    Dialer,
    Failure,
    Hangup,
    Input,
    Publish,
    Reply,
    Report,
    State,
    step,
)
from tests.samples import sample
from trunkline.core.events import TransitionError

T0 = 1_700_000_000.0
KINDS = {"twilio-main": "TWILIO", "telnyx-main": "TELNYX", "vonage-main": "VONAGE"}


def request(call_id: str = "q-1", providers: tuple[str, ...] = ("twilio-main", "telnyx-main")):
    r = sample("OutboundCallRequested", call_id=call_id)
    numbers = {"twilio-main": "+15557654321", "telnyx-main": "+15557654322",
               "vonage-main": "+15557654323"}  # fmt: skip
    r.update(providers=list(providers), from_numbers={p: numbers[p] for p in providers})
    return r


def routed(call_id: str = "q-1") -> dict:
    r = sample("CallRouted", call_id=call_id)
    r.update(provider="TWILIO", backend_id="backend-1", backend_media_url="ws://m:8081",
             edge_id="webhook-1")  # fmt: skip
    return r


def started(providers=("twilio-main", "telnyx-main")) -> tuple[Dialer, list]:
    d = Dialer("webhook-1")
    assert d.request(request(providers=providers), KINDS, T0) == []
    return d, d.decision("CallRouted", routed(), T0 + 0.01)


def names(actions, dest: str | None = None) -> list[str]:
    return [a.name for a in actions if isinstance(a, Publish) and (dest is None or dest in a.dests)]


def replies(actions) -> list[Reply]:
    return [a for a in actions if isinstance(a, Reply)]


def report(progress: str, attempt: int = 0, reason: str = "completed", sip=None, sid="CA1",
           event="e1") -> Report:  # fmt: skip
    return Report(attempt, sid, progress.lower(), progress, event, reason, sip)


def test_every_state_input_pair():
    for state, event in itertools.product([None, *State], Input):
        if event in TRANSITIONS.get(state, {}):
            assert step(state, event) is TRANSITIONS[state][event]
        else:
            with pytest.raises(TransitionError):
                step(state, event)


def test_every_listed_pair_is_reached_through_the_dialer():
    """Each state, driven into by real inputs; then each of its listed inputs, as the
    dialer receives it, reaches the table's target."""

    def into(state: State) -> Dialer:
        d, _ = started()
        if state is State.REQUESTED:
            d = Dialer("webhook-1")
            d.request(request(), KINDS, T0)
        elif state is State.CHECKING:
            d.result("q-1", 0, "unclear", T0)
        elif state is State.RINGING:
            d.result("q-1", 0, "CA1", T0)
            d.report("q-1", report("RINGING"), T0)
        elif state is State.ANSWERED:
            d.result("q-1", 0, "CA1", T0)
            d.report("q-1", report("ANSWERED"), T0)
        elif state is State.ENDED:
            d.result("q-1", 0, "CA1", T0)
            d.report("q-1", report("ENDED", reason="busy"), T0)
        elif state is State.FAILED:
            d.result("q-1", 0, Failure("invalid_number", False), T0)
        elif state is State.REFUSED:
            d = Dialer("webhook-1")
            d.request(request(), KINDS, T0)
            d.decision("CallRejected", sample("CallRejected", call_id="q-1"), T0)
        assert d.calls["q-1"].state is state
        return d

    def feed(d: Dialer, event: Input) -> None:
        call = d.calls["q-1"]
        attempt = call.current
        if event is Input.ROUTED:
            d.decision("CallRouted", routed(), T0 + 1)
        elif event is Input.REFUSED:
            d.decision("CallRejected", sample("CallRejected", call_id="q-1"), T0 + 1)
        elif event is Input.DEADLINE:
            d.expire(T0 + 3600)
        elif event is Input.TAKEN:
            d.result("q-1", attempt, "CA9", T0 + 1)
        elif event is Input.UNCLEAR:
            d.result("q-1", attempt, "unclear", T0 + 1)
        elif event is Input.FAILOVER:
            if call.state is State.RINGING:
                d.report("q-1", report("ENDED", reason="failed", sip=503), T0 + 1)
            else:
                d.result("q-1", attempt, Failure("http_5xx", True), T0 + 1)
        elif event is Input.EXHAUSTED:
            d.calls["q-1"] = call.__class__(**{**call.__dict__, "current": len(call.attempts) - 1})
            if call.state is State.RINGING:
                d.report("q-1", report("ENDED", attempt=1, reason="failed", sip=503), T0 + 1)
            else:
                d.result("q-1", 1, Failure("http_5xx", True), T0 + 1)
        elif event is Input.FINAL:
            d.result("q-1", attempt, Failure("invalid_number", False), T0 + 1)
        elif event is Input.CALLEE_END:
            d.report("q-1", report("ENDED", attempt=attempt, reason="busy"), T0 + 1)
        elif event is Input.HANGUP:
            d.report("q-1", report("ENDED", attempt=attempt), T0 + 1)
        else:
            progress = {Input.PROGRESS: "PROGRESS", Input.RINGING: "RINGING",
                        Input.ANSWERED: "ANSWERED"}[event]  # fmt: skip
            d.report("q-1", report(progress, attempt=attempt), T0 + 1)

    for state in [s for s in State]:
        for event, target in TRANSITIONS[state].items():
            if state in (State.ENDED, State.FAILED, State.REFUSED):
                continue  # late reports: checked below
            d = into(state)
            feed(d, event)
            assert d.calls["q-1"].state is target, (state, event)


def test_first_provider_takes_the_call():
    d, out = started()
    accepted = [a for a in out if isinstance(a, Publish) and a.name == "CallAccepted"]
    assert accepted and accepted[0].dests == ("routing",) and accepted[0].key == "us-east-1"
    announce = [a for a in out if isinstance(a, Publish) and "assignments" in a.dests]
    assert announce[0].record["provider"] == "TWILIO"
    assert announce[0].key == "backend-1"
    assert [a for a in out if isinstance(a, Dial)] == [Dial("q-1", 0)]
    out = d.result("q-1", 0, "CA1", T0 + 0.05)
    assert names(out, "call-events") == ["OutboundAttempt"]
    assert replies(out) == [Reply("q-1", "placed", 201, "twilio-main")]
    assert d.calls["q-1"].state is State.ATTEMPTING and d.calls["q-1"].placed
    out = d.report("q-1", report("RINGING"), T0 + 1)
    assert names(out) == ["CallProgress"]
    out = d.report("q-1", report("ANSWERED", event="e2"), T0 + 2)
    assert names(out) == ["CallAnswered"]
    out = d.report("q-1", report("ENDED", event="e3"), T0 + 30)
    assert names(out) == ["CallEnded"]
    ended = out[0]
    assert isinstance(ended, Publish) and ended.dests[0] == "admission" and ended.key == "456"
    assert ended.record["reason"] == "completed"
    assert d.calls["q-1"].state is State.ENDED


@pytest.mark.parametrize(
    "failure",
    [
        Failure("connect_error", True, "connection refused"),
        Failure("http_5xx", True, "Service Unavailable", 503),
        Failure("http_429", True, "Too Many Requests", 429),
        Failure("auth", True, "Authenticate", 401, "20003"),
    ],
)
def test_retryable_failures_move_to_the_next_provider(failure):
    d, _ = started()
    out = d.result("q-1", 0, failure, T0 + 0.1)
    assert names(out, "call-events") == ["OutboundAttemptFailed"]
    assert [a for a in out if isinstance(a, Dial)] == [Dial("q-1", 1)]
    announce = [a for a in out if isinstance(a, Publish) and "assignments" in a.dests]
    assert announce[0].record["provider"] == "TELNYX"  # the node lets Telnyx's stream claim it
    assert replies(out) == [] and names(out, "admission") == []  # the API still waits
    out = d.result("q-1", 1, "v3:abc", T0 + 0.2)
    assert replies(out) == [Reply("q-1", "placed", 201, "telnyx-main")]


def test_invalid_number_does_not_fail_over():
    d, _ = started()
    failure = pv.classify("TWILIO", pv.Refused(400, "21211", "Invalid 'To' Phone Number"))
    out = d.result("q-1", 0, failure, T0 + 0.1)
    assert not [a for a in out if isinstance(a, Dial)]
    assert replies(out) == [
        Reply("q-1", "failed", 400, "Invalid 'To' Phone Number", None, "to", "21211")
    ]
    assert names(out, "admission") == ["CallEnded"]  # the slots are freed
    assert d.calls["q-1"].state is State.FAILED


def test_every_provider_down_fails_once_with_every_attempt_logged():
    d, _ = started(("twilio-main", "telnyx-main", "vonage-main"))
    history = []
    for attempt in range(3):
        out = d.result("q-1", attempt, Failure("connect_error", True, "refused"), T0 + attempt)
        history += names(out, "call-events")
    assert history == ["OutboundAttemptFailed"] * 3 + ["CallEnded"]
    assert replies(out)[0].status == 503 and replies(out)[0].retry_after_s == 5
    ends = [a for a in out if isinstance(a, Publish) and a.name == "CallEnded"]
    assert len(ends) == 1 and ends[0].record["reason"] == "failed"
    # late results and reports change nothing, and nothing is freed twice
    assert d.result("q-1", 2, Failure("connect_error", True), T0 + 9) == []
    assert d.report("q-1", report("ENDED", attempt=2, reason="failed"), T0 + 9) == []


@pytest.mark.parametrize(("sip", "reason"), [(408, "failed"), (500, "failed"), (503, "completed"),
                                            (504, "no_answer")])  # fmt: skip
def test_infrastructure_failure_before_answer_fails_over(sip, reason):
    d, _ = started()
    d.result("q-1", 0, "CA1", T0)
    d.report("q-1", report("RINGING"), T0 + 1)
    out = d.report("q-1", report("ENDED", reason=reason, sip=sip, event="e9"), T0 + 2)
    assert [a for a in out if isinstance(a, Dial)] == [Dial("q-1", 1)]
    assert names(out, "admission") == []  # not the call's outcome
    assert d.calls["q-1"].tried[-1]["provider_error_code"] == str(sip)


@pytest.mark.parametrize(
    ("reason", "sip"),
    [("busy", 486), ("no_answer", 480), ("rejected", 603), ("failed", 404), ("failed", 484),
     ("cancelled", None), ("failed", None)],
)  # fmt: skip
def test_callee_outcomes_end_the_call_without_failover(reason, sip):
    d, _ = started()
    d.result("q-1", 0, "CA1", T0)
    out = d.report("q-1", report("ENDED", reason=reason, sip=sip), T0 + 2)
    assert not [a for a in out if isinstance(a, Dial)]
    assert names(out, "admission") == ["CallEnded"]
    assert d.calls["q-1"].state is State.ENDED


def test_no_failover_after_answer():
    d, _ = started()
    d.result("q-1", 0, "CA1", T0)
    d.report("q-1", report("ANSWERED"), T0 + 1)
    assert d.expire(T0 + 600) == [] and d.calls["q-1"].state is State.ANSWERED  # no ring limit
    out = d.report("q-1", report("ENDED", reason="failed", sip=503, event="e2"), T0 + 9)
    assert not [a for a in out if isinstance(a, Dial)]
    assert names(out, "admission") == ["CallEnded"]


def test_an_unclear_request_is_checked_before_the_next_attempt():
    d, _ = started()
    out = d.result("q-1", 0, "unclear", T0 + 5)
    assert out == [Dial("q-1", 0, check=True)]
    assert d.calls["q-1"].state is State.CHECKING
    out = d.result("q-1", 0, "CA7", T0 + 6, lookup=True)  # found: adopted, no second call
    assert replies(out)[0].outcome == "placed"
    assert d.calls["q-1"].tried[-1]["found_by_lookup"] is True
    d2, _ = started()
    d2.result("q-1", 0, "unclear", T0 + 5)
    out = d2.result("q-1", 0, Failure("timeout", True, "not found"), T0 + 6)
    assert [a for a in out if isinstance(a, Dial)] == [Dial("q-1", 1)]


def test_a_report_resolves_an_unclear_request():
    d, _ = started()
    d.result("q-1", 0, "unclear", T0 + 5)
    out = d.report("q-1", report("PROGRESS", sid="CA5"), T0 + 5.5)
    assert replies(out)[0].outcome == "placed"
    assert d.calls["q-1"].state is State.ATTEMPTING and d.calls["q-1"].provider_call_id == "CA5"
    assert d.result("q-1", 0, Failure("timeout", True), T0 + 6) == []  # the call exists


def test_an_old_attempt_that_rings_anyway_is_hung_up():
    d, _ = started()
    d.result("q-1", 0, "unclear", T0 + 5)
    d.result("q-1", 0, Failure("timeout", True, "not found"), T0 + 6)
    out = d.report("q-1", report("RINGING", attempt=0, sid="CA-late"), T0 + 7)
    assert out == [Hangup("q-1", 0, "CA-late")]
    assert d.calls["q-1"].current == 1


def test_refusals_answer_the_api_and_dial_nothing():
    d = Dialer("webhook-1")
    d.request(request(), KINDS, T0)
    rejected = sample("CallRejected", call_id="q-1")
    rejected.update(status_code=486, reason="plan starter limit reached", retry_after_s=None)
    out = d.decision("CallRejected", rejected, T0 + 0.02)
    assert out == [Reply("q-1", "refused", 486, "plan starter limit reached", None)]
    assert d.calls["q-1"].state is State.REFUSED
    assert d.decision("CallRouted", routed(), T0 + 0.03) == []  # a replayed decision


def test_deadlines_on_the_hand_held_clock():
    d = Dialer("webhook-1", decision_timeout=5.0)
    d.request(request(), KINDS, T0)
    assert d.next_deadline() == T0 + 5.0
    assert d.expire(T0 + 4.9) == []
    out = d.expire(T0 + 5.0)
    assert replies(out)[0].status == 503
    ended = next(a for a in out if isinstance(a, Publish))
    assert ended.record["reason"] == "edge_timeout" and "admission" in ended.dests
    d2, _ = started()
    d2.result("q-1", 0, "CA1", T0)
    out = d2.expire(T0 + 30 + 30 + 1)
    assert Hangup("q-1", 0, "CA1") in out
    assert names(out, "admission") == ["CallEnded"]


def test_replay_rebuilds_and_resume_checks_what_may_exist():
    """A dialer restarted after attempt 1's request left, before its answer was
    journaled: replay ends in ATTEMPTING without a provider call, and resume checks it
    (Telnyx repeats with the same command_id, Twilio looks it up) instead of dialing."""
    d, _ = started()
    journal = [("OutboundCallRequested", request()), ("CallRouted", routed())]
    out = d.result("q-1", 0, Failure("http_5xx", True, "down", 503), T0 + 1)
    journal += [(a.name, a.record) for a in out if isinstance(a, Publish) and "outbound" in a.dests]
    fresh = Dialer("webhook-1")
    for name, record in journal:
        fresh.replay(name, record, KINDS, T0 + 60)
    call = fresh.calls["q-1"]
    assert (call.state, call.current, call.placed) == (State.ATTEMPTING, 1, False)
    out = fresh.resume(T0 + 60)
    assert Dial("q-1", 1, check=True) in out
    assert names(out, "routing") == ["CallAccepted"]
    assert fresh.calls["q-1"].state is State.CHECKING


def test_resume_asks_admission_again_for_an_undecided_call():
    fresh = Dialer("webhook-1")
    fresh.replay("OutboundCallRequested", request(), KINDS, T0)
    out = fresh.resume(T0 + 1)
    assert names(out, "admission") == ["OutboundCallRequested"]
    assert fresh.decision("CallRouted", routed(), T0 + 1.1)  # then it dials as usual


def test_classify_answers():
    assert pv.classify("TWILIO", pv.Created("CA1")) == "CA1"
    assert pv.classify("TWILIO", pv.NoResponse("read timeout")) == "unclear"
    assert pv.classify("TELNYX", pv.NoConnection("refused")).retryable
    assert pv.classify("TWILIO", pv.Refused(503)).reason == "http_5xx"
    assert pv.classify("VONAGE", pv.Refused(429)).retryable
    assert pv.classify("TELNYX", pv.Refused(401)).reason == "auth"
    bad_to = pv.telnyx_error(422, {"errors": [{"code": "10016", "title": "Invalid 'to'",
                                               "source": {"pointer": "/to"}}]})  # fmt: skip
    assert pv.classify("TELNYX", bad_to).reason == "invalid_number"
    vonage_bad = pv.vonage_error(400, {"title": "Bad Request",
                                       "invalid_parameters": [{"name": "to"}]})  # fmt: skip
    assert not pv.classify("VONAGE", vonage_bad).retryable
    assert pv.classify("TWILIO", pv.Refused(400, "21212")).reason == "rejected"


def test_requests_carry_the_tags_providers_send_back():
    t = pv.Target("q-1", 1, "webhook-1", "req-1", "+4915112345678", "+15557654322",
                  "ws://m:8081/", "https://edge.example", 25)  # fmt: skip
    tw = pv.twilio_create(t)
    assert tw["status_callback"] == (
        "https://edge.example/webhooks/twilio/status?callQueueId=q-1&attempt=1&dialer=webhook-1"
    )
    assert (
        '<Stream url="ws://m:8081/twilio"><Parameter name="callQueueId" value="q-1"' in tw["twiml"]
    )
    assert tw["status_callback_event"] == ["initiated", "ringing", "answered", "completed"]
    tx = pv.telnyx_dial(t, "conn-1")
    assert tx["command_id"] == "req-1" and tx["stream_url"] == "ws://m:8081/telnyx"
    assert pv.outbound_tags(tx["client_state"]) == {
        "callQueueId": "q-1", "attempt": "1", "dialer": "webhook-1"
    }  # fmt: skip
    assert pv.outbound_tags(pv.client_state(t)[:-4]) is None
    vg = pv.vonage_create(t, "vonage-main", "s3cret")
    assert vg["to"] == [{"type": "phone", "number": "4915112345678"}]
    assert vg["ncco"][0]["endpoint"][0]["uri"] == "ws://m:8081/vonage"
    assert f"sig={pv.vonage_sig('s3cret', t.tags())}" in vg["event_url"][0]


def test_a_resumed_call_checks_every_attempt_it_may_have_sent():
    """The journal lost everything after the request (the process died before its
    linger): after the replayed decision, attempt 0 is checked, not sent; when the check
    finds nothing the next attempt is checked as well."""
    fresh = Dialer("webhook-1")
    fresh.replay("OutboundCallRequested", request(), KINDS, T0)
    fresh.resume(T0 + 1)
    out = fresh.decision("CallRouted", routed(), T0 + 1.1)
    assert [a for a in out if isinstance(a, Dial)] == [Dial("q-1", 0, check=True)]
    out = fresh.result("q-1", 0, Failure("timeout", True, "not found"), T0 + 2)
    assert [a for a in out if isinstance(a, Dial)] == [Dial("q-1", 1, check=True)]
    out = fresh.result("q-1", 1, "v3:found", T0 + 3, lookup=True)
    assert replies(out)[0].outcome == "placed"


def test_an_answered_call_whose_end_never_comes_is_forgotten():
    d, _ = started()
    d.result("q-1", 0, "CA1", T0)
    d.report("q-1", report("ANSWERED"), T0 + 1)
    assert d.expire(T0 + 1 + 4 * 3600) == []  # nothing is published: the node ends it
    assert "q-1" not in d.calls
