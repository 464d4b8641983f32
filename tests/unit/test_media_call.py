"""The media node's call machine (media/call.py) on a hand-held clock: every (state, input)
pair of its table, then the timers and the actions of each path."""

from __future__ import annotations

import copy

import pytest

from media.call import (
    TRANSITIONS,
    Call,
    HangUp,
    Input,
    PublishAccepted,
    PublishAnswered,
    PublishEnded,
    Release,
    Reply,
    SendOk,
    State,
    TransitionError,
    step,
)

T1, T2 = 0.5, 4.0

#: how each state is reached from a new call (at t=0, with no time passing)
PATHS: dict[State, list[Input]] = {
    State.OFFERED: [],
    State.WAITING: [Input.WAIT],
    State.CANCELLED: [Input.WAIT, Input.CANCEL],
    State.ACCEPTED: [Input.CLAIM],
    State.ANSWERED: [Input.CLAIM, Input.ANSWER],
    State.HELD: [Input.CLAIM, Input.ANSWER, Input.HOLD],
    State.ENDING: [Input.CLAIM, Input.ANSWER, Input.LOCAL_END],
    State.ENDED: [Input.CLAIM, Input.ANSWER, Input.REMOTE_END],
}


def reach(state: State, *, reliable: bool = False, media_timeout: float | None = 10.0) -> Call:
    call = Call("c-1", 0.0, reliable=reliable, wait_s=2.0, media_timeout=media_timeout)
    for event in PATHS[state]:
        call.handle(event, 0.0, status=404, why="not here yet")
    assert call.state is state
    return call


def test_every_state_is_reachable_and_listed():
    assert set(PATHS) == set(State) == set(TRANSITIONS)


PAIRS = [(state, event) for state in State for event in Input]


@pytest.mark.parametrize("reliable", [False, True], ids=["udp", "reliable"])
@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s.name}-{e.name}" for s, e in PAIRS])
def test_every_state_input_pair(state: State, event: Input, reliable: bool):
    """Listed pairs reach their target; the others raise and change nothing."""
    call = reach(state, reliable=reliable)
    target = TRANSITIONS[state].get(event)
    if target is not None:
        call.handle(event, 1.0, status=403, why="w", reason="completed", side="caller")
        assert call.state is target
        assert step(state, event) is target
    else:
        before = copy.deepcopy(vars(call))
        with pytest.raises(TransitionError, match=f"media call {state.value} cannot take"):
            call.handle(event, 1.0, status=403, why="w")
        assert vars(call) == before


def drive(call: Call, until: float) -> list[tuple[float, list]]:
    """Fire the call's timers at their deadlines up to `until`: (time, actions) each."""
    fired = []
    while call.deadline is not None and call.deadline <= until:
        at = call.deadline
        fired.append((at, call.expire(at)))
    return fired


# -- the BYE (Timers E and F) ----------------------------------------------------------------
def test_a_bye_over_udp_is_retransmitted_t1_doubling_to_t2_and_given_up_after_64_t1():
    call = reach(State.ANSWERED)
    first = call.handle(Input.LOCAL_END, 0.0, reason="completed", side="agent")
    # CallEnded goes out with the first BYE: the slots are freed whatever the UA does
    assert first == [
        Release(),
        PublishEnded("completed", "agent", setup_ms=0, talk_ms=0),
        HangUp(),
    ]
    fired = drive(call, 100.0)
    resent = [at for at, actions in fired if actions == [HangUp(retransmission=True)]]
    assert resent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert fired[-1] == (32.0, [])  # Timer F: given up, the call ended anyway
    assert call.state is State.ENDED and call.deadline is None


def test_a_bye_answered_stops_the_retransmissions():
    call = reach(State.ANSWERED)
    call.handle(Input.LOCAL_END, 0.0)
    assert call.expire(0.5) == [HangUp(retransmission=True)]
    assert call.handle(Input.BYE_DONE, 0.7) == []
    assert call.state is State.ENDED and call.deadline is None


def test_a_late_clock_keeps_the_bye_schedule():
    call = reach(State.ANSWERED)
    call.handle(Input.LOCAL_END, 0.0)
    call.expire(0.9)  # due at 0.5, fired late
    assert call.deadline == 1.5  # not 1.9


def test_over_a_reliable_transport_the_bye_is_sent_once_and_waited_for_64_t1():
    call = reach(State.ANSWERED, reliable=True)
    assert call.handle(Input.LOCAL_END, 0.0)[-1] == HangUp()
    assert drive(call, 100.0) == [(32.0, [])]
    assert call.state is State.ENDED


def test_a_bye_from_the_caller_crossing_ours_ends_the_call_without_a_second_call_ended():
    call = reach(State.ANSWERED)
    call.handle(Input.LOCAL_END, 0.0)
    assert call.handle(Input.REMOTE_END, 0.2) == []
    assert call.state is State.ENDED


# -- the 200 OK (RFC 3261 §13.3.1.4) -----------------------------------------------------------
def test_the_200_ok_is_retransmitted_until_the_ack_and_the_call_ends_without_one():
    call = reach(State.WAITING)
    assert call.handle(Input.CLAIM, 1.0) == [PublishAccepted(), SendOk()]
    fired = drive(call, 33.0)
    resent = [at for at, actions in fired if actions == [SendOk(retransmission=True)]]
    assert resent == [1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    at, actions = fired[-1]
    assert at == 33.0 and call.state is State.ENDING
    assert actions == [
        Release(),
        PublishEnded("failed", "system", None, None, "no ACK for the 200 OK"),
        HangUp(),
    ]


def test_the_ack_stops_the_200_ok_and_answers_the_call():
    call = reach(State.ACCEPTED)
    assert call.expire(0.5) == [SendOk(retransmission=True)]
    assert call.handle(Input.ANSWER, 0.8) == [PublishAnswered()]
    assert call.handle(Input.ANSWER, 0.9) == []  # a retransmitted ACK
    assert call.timer is None
    assert call.deadline == pytest.approx(10.8)  # only the media timeout is left


def test_over_tcp_the_200_ok_is_not_retransmitted():
    call = reach(State.ACCEPTED, reliable=True)
    assert drive(call, 31.9) == []
    assert call.expire(32.0)[1].reason == "failed"


# -- the assignment wait and CANCEL ---------------------------------------------------------------
def test_the_wait_for_an_assignment_expires_with_the_answer_given_at_wait():
    call = Call("c", 0.0, wait_s=2.0)
    assert call.handle(Input.WAIT, 0.0, status=404, why="queue entry q is not here") == []
    assert call.deadline == 2.0
    assert call.expire(1.99) == []
    assert call.expire(2.0) == [Reply(404, "queue entry q is not here"), Release()]
    assert call.state is State.ENDED


def test_a_refusal_answers_with_its_status():
    call = Call("c", 0.0)
    assert call.handle(Input.REFUSE, 0.0, status=486, why="busy") == [Reply(486, "busy"), Release()]


def test_a_cancel_during_the_wait_is_answered_487_and_reported_when_the_entry_turns_up():
    call = reach(State.WAITING)
    assert call.handle(Input.CANCEL, 0.5) == [Reply(487, "Request Terminated")]
    assert call.deadline == 0.5 + 64 * T1  # keeps watching for the assignment
    actions = call.handle(Input.CLAIM, 3.0)
    assert actions == [Release(), PublishEnded("cancelled", "caller", None, None)]
    assert call.state is State.ENDED


def test_a_cancel_whose_entry_never_turns_up_ends_with_nothing_to_report():
    call = reach(State.OFFERED)
    call.handle(Input.CANCEL, 0.0)
    assert drive(call, 100.0) == [(32.0, [Release()])]


def test_a_cancelled_call_whose_entry_is_not_ours_reports_nothing():
    call = reach(State.CANCELLED)
    assert call.handle(Input.REFUSE, 1.0, status=403, why="another node's") == [Release()]


# -- media timeout, hold and resume -------------------------------------------------------------
def test_no_media_for_the_timeout_ends_the_call_as_media_timeout():
    call = Call("c", 0.0, media_timeout=10.0)
    call.handle(Input.CLAIM, 0.0)
    call.handle(Input.ANSWER, 0.25)
    call.saw_media(5.0)
    call.saw_media(4.0)  # older news changes nothing
    assert call.deadline == 15.0
    assert call.expire(14.9) == []
    actions = call.expire(15.0)
    assert actions == [
        Release(),
        PublishEnded("media_timeout", "system", setup_ms=250, talk_ms=14750),
        HangUp(),
    ]
    assert call.state is State.ENDING


def test_a_held_call_has_no_media_timeout_and_resume_restarts_it():
    call = reach(State.ANSWERED)
    call.handle(Input.HOLD, 1.0)
    assert call.deadline is None
    assert call.expire(100.0) == []
    call.handle(Input.RESUME, 100.0)
    assert call.state is State.ANSWERED and call.deadline == 110.0


def test_a_provider_stream_has_no_media_timeout():
    call = reach(State.ANSWERED, reliable=True, media_timeout=None)
    assert call.deadline is None


def test_a_remote_end_reports_the_talk_time():
    call = Call("c", 0.0)
    call.handle(Input.CLAIM, 1.0)
    call.handle(Input.ANSWER, 1.5)
    actions = call.handle(Input.REMOTE_END, 4.0, reason="completed", side="caller")
    assert actions == [Release(), PublishEnded("completed", "caller", 500, 2500)]


def test_a_local_end_carries_its_reason_and_detail():
    call = reach(State.ANSWERED)
    actions = call.handle(
        Input.LOCAL_END, 2.0, reason="failed", side="system", why="twilio: start is an array"
    )
    assert actions[1] == PublishEnded("failed", "system", 0, 2000, "twilio: start is an array")
    assert repr(call) == "<Call c-1 ending>"
