"""Billing: every finished call becomes one CallRated record (pure; keyed by call id).

The billing worker (`streams/billing_agent.py`) follows `call-events`, where every event
of a call lands in the call's partition, in order. For each event it calls `handle`, which
returns the call's new state and what to emit; the worker keeps the state in a Faust table
and sends CallRated to `billing` (key call id). Time is the events' own `occurred_at`:
the worker never reads the clock, so a replay of the same events rates every call the
same way, to the last decimal.

The call's state (events not listed raise TransitionError and leave it unchanged):

    (none)  --facts / answer / cost--> OPEN     remember who, when, which plan
    (none)  --end--------------------> RATED    CallRated run 1 (from the end alone)
    OPEN    --facts / answer / cost--> OPEN
    OPEN    --end--------------------> RATED    CallRated run 1
    RATED   --facts / answer---------> RATED    too late to matter: nothing
    RATED   --end--------------------> RATED    a duplicate or a second end: never a second charge
    RATED   --cost (a new report)----> RATED    CallRated run n+1 with the provider's cost
    RATED   --cost (the same again)--> RATED    nothing

Inputs: facts = CallOffered, CallAdmitted, OutboundCallRequested, OutboundAttempt; answer
= CallAnswered; end = CallEnded, CallRejected; cost = CallCost (a provider's own report,
Telnyx `call.cost`). Every other record is not an input (`input_for` is None).

Rating (`rate`):
- the rate plan: the call's plan (CallAdmitted's `plan_id`, else the business's plan)
  names a rate plan (`ratePlanId`); of its versions, the one with the latest
  `effectiveFrom` at or before the call's start (its offer's `occurred_at`) applies;
- talk seconds: the end's `talk_ms` (media node), else end - answer, else the provider's
  duration of a completed call; rounded up to whole seconds;
- billable seconds with increment a/b: a if talk <= a, else a + ceil((talk - a) / b) * b,
  and at least the version's `minimumSeconds`;
- amount = connect fee + per-minute price * billable / 60, rounded half-up to 6 decimal
  places (`decimal.Decimal`, never a float);
- a call that never connected (rejected, cancelled, unanswered) is rated at zero with a
  reason, as is a call whose plan has no rate plan (or no version in effect).

CallRated's event id derives from the event it was computed from, so a re-processed end
emits a byte-identical record, and ClickHouse keeps one row per call and rating run.

`scripts/setup` compiles this module with mypyc (trunkline/core/native.py; the worker and
the rebuild run every call-events record through `handle`): its annotations are checked
at run time there, so records are dicts, and its classes are plain native classes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Final

from trunkline.core.events import Emit, TransitionError, derived_id, envelope, transition

PRODUCER = "billing"
SCALE = Decimal("0.000001")  # CallRated's decimals: scale 6
ZERO = Decimal("0")


class CallState(enum.Enum):
    OPEN = "OPEN"
    RATED = "RATED"


class Input(enum.Enum):
    FACTS = "facts"
    ANSWER = "answer"
    END = "end"
    COST = "cost"


NONE = None
TRANSITIONS: dict[CallState | None, dict[Input, CallState]] = {
    NONE: {
        Input.FACTS: CallState.OPEN,
        Input.ANSWER: CallState.OPEN,
        Input.COST: CallState.OPEN,
        Input.END: CallState.RATED,
    },
    CallState.OPEN: {
        Input.FACTS: CallState.OPEN,
        Input.ANSWER: CallState.OPEN,
        Input.COST: CallState.OPEN,
        Input.END: CallState.RATED,
    },
    CallState.RATED: {
        Input.FACTS: CallState.RATED,
        Input.ANSWER: CallState.RATED,
        Input.END: CallState.RATED,
        Input.COST: CallState.RATED,
    },
}

INPUTS: dict[str, Input] = {
    "CallOffered": Input.FACTS,
    "CallAdmitted": Input.FACTS,
    "OutboundCallRequested": Input.FACTS,
    "OutboundAttempt": Input.FACTS,
    "CallAnswered": Input.ANSWER,
    "CallEnded": Input.END,
    "CallRejected": Input.END,
    "CallCost": Input.COST,
}


def input_for(name: str) -> Input | None:
    """The machine's input for a record type; None: the record does not concern billing."""
    return INPUTS.get(name)


def step(state: CallState | None, event: Input) -> CallState:
    return transition(TRANSITIONS, state, event, "billing call")


# -- the formula ----------------------------------------------------------------------------
def billable_seconds(talk_seconds: int, first: int, step_s: int, minimum: int = 0) -> int:
    """Increment a/b: the first `first` seconds whole, then steps of `step_s`."""
    if talk_seconds < 0:
        raise ValueError(f"talk time cannot be negative ({talk_seconds} s)")
    if first < 1 or step_s < 1:
        raise ValueError(f"increment {first}/{step_s}: both parts must be at least 1")
    if talk_seconds <= first:
        billable = first
    else:
        steps = -(-(talk_seconds - first) // step_s)  # ceil without floats
        billable = first + steps * step_s
    return max(billable, minimum)


def amount(per_minute: Decimal, billable: int, connect_fee: Decimal = ZERO) -> Decimal:
    """connect fee + per-minute price * billable / 60, rounded half-up to 6 places."""
    return (connect_fee + per_minute * billable / 60).quantize(SCALE, ROUND_HALF_UP)


def talk_seconds(talk_ms: int) -> int:
    """Talk time in whole seconds, rounded up (a started second is a second)."""
    return -(-max(0, talk_ms) // 1000)


@dataclass(frozen=True)
class RateVersion:
    """One version of a rate plan (a RatePlan config record)."""

    id: str
    version: int
    effective_from: int
    currency: str
    inbound_per_minute: Decimal
    outbound_per_minute: Decimal
    connect_fee: Decimal
    increment_first: int
    increment_step: int
    minimum_seconds: int

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> RateVersion:
        return cls(
            str(r["id"]),
            int(r["version"]),
            int(r["effective_from"]),
            str(r["currency"]),
            Decimal(r["inbound_per_minute"]),
            Decimal(r["outbound_per_minute"]),
            Decimal(r.get("connect_fee") or "0"),
            int(r["increment_first"]),
            int(r["increment_step"]),
            int(r.get("minimum_seconds") or 0),
        )

    @property
    def increment(self) -> str:
        return f"{self.increment_first}/{self.increment_step}"


def version_at(versions: Iterable[RateVersion], at_ms: int) -> RateVersion | None:
    """The version in effect at `at_ms`: the latest `effective_from` at or before it."""
    best: RateVersion | None = None
    for v in versions:
        if v.effective_from <= at_ms and (
            best is None or (v.effective_from, v.version) > (best.effective_from, best.version)
        ):
            best = v
    return best


class RatingConfig:
    """What rating reads of the config: plans, businesses and rate plan versions, each a
    mapping key -> record (Faust GlobalTables in the worker, dicts in tests)."""

    def __init__(self, sections: Mapping[str, Mapping[str, Any]]) -> None:
        self.sections = sections
        self._parsed: dict[str, RateVersion] = {}  # config event id -> parsed version

    def _get(self, section: str, key: str) -> Mapping[str, Any] | None:
        if not key:
            return None
        value = (self.sections.get(section) or {}).get(key)
        return value if value else None

    def plan_of_business(self, business_id: str) -> str:
        business = self._get("businesses", business_id)
        return str(business.get("plan_id") or "") if business else ""

    def rate_plan_of(self, plan_id: str) -> str:
        plan = self._get("plans", plan_id)
        return str(plan.get("rate_plan_id") or "") if plan else ""

    def versions(self, rate_plan_id: str) -> list[RateVersion]:
        out = []
        for r in (self.sections.get("ratePlans") or {}).values():
            if r and r.get("id") == rate_plan_id:
                # a config record's event id derives from its content: parse each once
                key = str((r.get("envelope") or {}).get("event_id") or "")
                version = self._parsed.get(key) if key else None
                if version is None:
                    version = RateVersion.from_record(r)
                    if key:
                        self._parsed[key] = version
                out.append(version)
        return out


# -- the call's state -------------------------------------------------------------------------
class Call:
    """What billing remembers of one call (a Faust table value, flat JSON). Immutable
    (Final: mypy holds every writer to it): states are shared, never changed in place.

    A plain class, not a frozen dataclass: a new Call is made for most events, and a
    frozen dataclass's `__init__` (a guarded `object.__setattr__` per field) cost more
    than the rest of the event in the mypyc build; equality is a dataclass's, field by
    field."""

    def __init__(
        self,
        state: CallState,
        business_id: str = "",
        direction: str = "INBOUND",
        provider: str = "SIP",
        provider_account_id: str = "",
        provider_call_id: str = "",
        plan_id: str = "",
        started_at: int | None = None,
        answered_at: int | None = None,
        cost: str | None = None,  # the provider's latest cost report (decimal string)
        cost_currency: str = "",
        cost_event_id: str = "",
        run: int = 0,  # the last rating run emitted (RATED)
        rated: dict[str, Any] | None = None,  # the last CallRated, JSON-safe
    ) -> None:
        self.state: Final = state
        self.business_id: Final = business_id
        self.direction: Final = direction
        self.provider: Final = provider
        self.provider_account_id: Final = provider_account_id
        self.provider_call_id: Final = provider_call_id
        self.plan_id: Final = plan_id
        self.started_at: Final = started_at
        self.answered_at: Final = answered_at
        self.cost: Final = cost
        self.cost_currency: Final = cost_currency
        self.cost_event_id: Final = cost_event_id
        self.run: Final = run
        self.rated: Final[dict[str, Any]] = {} if rated is None else rated

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.state,
            self.business_id,
            self.direction,
            self.provider,
            self.provider_account_id,
            self.provider_call_id,
            self.plan_id,
            self.started_at,
            self.answered_at,
            self.cost,
            self.cost_currency,
            self.cost_event_id,
            self.run,
            self.rated,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Call):
            return NotImplemented
        return self._fields() == other._fields()

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Call):
            return NotImplemented
        return self._fields() != other._fields()

    __hash__ = None  # type: ignore[assignment]  # equal by value, and it holds a dict

    def __repr__(self) -> str:
        return f"Call{self._fields()!r}"

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "business_id": self.business_id,
            "direction": self.direction,
            "provider": self.provider,
            "provider_account_id": self.provider_account_id,
            "provider_call_id": self.provider_call_id,
            "plan_id": self.plan_id,
            "started_at": self.started_at,
            "answered_at": self.answered_at,
            "cost": self.cost,
            "cost_currency": self.cost_currency,
            "cost_event_id": self.cost_event_id,
            "run": self.run,
            "rated": _rated_json_safe(self.rated),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Call | None:
        if not data:
            return None
        return cls(
            CallState(data["state"]),
            data.get("business_id") or "",
            data.get("direction") or "INBOUND",
            data.get("provider") or "SIP",
            data.get("provider_account_id") or "",
            data.get("provider_call_id") or "",
            data.get("plan_id") or "",
            data.get("started_at"),
            data.get("answered_at"),
            data.get("cost"),
            data.get("cost_currency") or "",
            data.get("cost_event_id") or "",
            int(data.get("run") or 0),
            _from_json_safe(data.get("rated") or {}),
        )


#: CallRated fields that are decimals (stored as strings in the table)
DECIMAL_FIELDS = ("per_minute", "connect_fee", "amount", "provider_cost")


def _json_safe(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in record.items()}


def _rated_json_safe(rated: dict[str, Any]) -> dict[str, Any]:
    """`_json_safe` of a Call's `rated`, whose only decimals are DECIMAL_FIELDS (`rate`
    makes them; `from_json` parses only them): a copy with those four made strings."""
    out = dict(rated)
    for k in DECIMAL_FIELDS:
        v = out.get(k)
        if isinstance(v, Decimal):
            out[k] = str(v)
    return out


def _from_json_safe(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (Decimal(v) if k in DECIMAL_FIELDS and v is not None else v) for k, v in record.items()
    }


def _facts(
    c: Call,
    state: CallState,
    business_id: str,
    direction: str,
    provider: str,
    provider_account_id: str,
    provider_call_id: str,
    plan_id: str,
    started_at: int | None,
    answered_at: int | None,
) -> Call:
    """`c` with new facts (what the call was), its cost and rating kept."""
    return Call(
        state,
        business_id,
        direction,
        provider,
        provider_account_id,
        provider_call_id,
        plan_id,
        started_at,
        answered_at,
        c.cost,
        c.cost_currency,
        c.cost_event_id,
        c.run,
        c.rated,
    )


def _billed(
    c: Call,
    state: CallState,
    cost: str | None,
    cost_currency: str,
    cost_event_id: str,
    run: int,
    rated: dict[str, Any],
) -> Call:
    """`c` with a new cost report or rating, its facts kept."""
    return Call(
        state,
        c.business_id,
        c.direction,
        c.provider,
        c.provider_account_id,
        c.provider_call_id,
        c.plan_id,
        c.started_at,
        c.answered_at,
        cost,
        cost_currency,
        cost_event_id,
        run,
        rated,
    )


class Result:
    """The call's new state and what to emit (one is made per event: a plain class, which
    a mypyc build makes without Python code). `call` is the very object given when the
    event changed nothing: callers test `is`."""

    def __init__(self, call: Call | None, emits: list[Emit]) -> None:
        self.call: Final = call
        self.emits: Final = emits

    def __repr__(self) -> str:
        return f"Result({self.call!r}, {self.emits!r})"


#: the state a call's first event starts from (immutable: shared by every new call)
_NEW = Call(CallState.OPEN)
#: TRANSITIONS by state and record type, for `handle`'s lookup per event (enum members
#: hash in Python code; record type names are strings with a cached hash)
_ROWS: tuple[tuple[CallState | None, dict[str, CallState]], ...] = tuple(
    (s, {n: row[i] for n, i in INPUTS.items() if i in row}) for s, row in TRANSITIONS.items()
)


def _next(state: CallState | None, name: str) -> CallState:
    """`step(state, input_for(name))`, from the table's rows keyed by record type."""
    for s, row in _ROWS:
        if s is state:
            target = row.get(name)
            if target is not None:
                return target
            break
    event = input_for(name)
    if event is None:
        raise TransitionError(f"billing does not take {name}")
    return step(state, event)  # not listed: raises


def handle(name: str, record: dict[str, Any], call: Call | None, config: RatingConfig) -> Result:
    """One record of the call's history (a decoded record: a dict, which the mypyc build
    reads without method calls); the new state and what to emit."""
    event = INPUTS.get(name)
    if event is None:
        raise TransitionError(f"billing does not take {name}")
    state = _next(call.state if call is not None else None, name)
    current = call if call is not None else _NEW
    if event is Input.END:
        if call is not None and call.state is CallState.RATED:
            return Result(call, [])  # rated once: a duplicate or second end charges nothing
        facts = _with_facts(current, name, record, current.state)
        rated = rate(facts, name, record, config, 1)
        new = _billed(facts, state, facts.cost, facts.cost_currency, facts.cost_event_id, 1, rated)
        return Result(new, [_emit(rated)])
    if event is Input.COST:
        event_id = str(record["envelope"]["event_id"])
        if current.cost_event_id == event_id:
            return Result(call, [])  # the same report again
        cost = _decimal_text(record.get("cost"))
        currency = str(record.get("currency") or "")
        if current.state is not CallState.RATED:
            return Result(
                _billed(current, state, cost, currency, event_id, current.run, current.rated), []
            )
        reissued = {
            **current.rated,
            "envelope": envelope(
                str(record["envelope"]["call_id"]),
                PRODUCER,
                int(current.rated["envelope"]["occurred_at"]),
                derived_id(event_id, "CallRated"),
            ),
            "provider_cost": _cost(cost),
            "provider_cost_currency": currency,
            "rating_run": current.run + 1,
            "rated_event_id": event_id,
        }
        new = _billed(current, state, cost, currency, event_id, current.run + 1, reissued)
        return Result(new, [_emit(reissued)])
    if current.state is CallState.RATED:
        return Result(call, [])  # facts after the rating change nothing
    return Result(_with_facts(current, name, record, state), [])


def _emit(rated: dict[str, Any]) -> Emit:
    return Emit("billing", rated["envelope"]["call_id"], "CallRated", rated)


def _with_facts(call: Call, name: str, r: dict[str, Any], state: CallState) -> Call:
    """`call` in `state` with what record `name` says of the call; `call` itself when
    that changes nothing."""
    at = int(r["envelope"]["occurred_at"])
    business_id = call.business_id
    if not business_id:
        business = r.get("business_id")
        if business:
            business_id = str(business)
    direction = call.direction
    provider = call.provider
    account = call.provider_account_id
    provider_call_id = call.provider_call_id
    plan_id = call.plan_id
    started_at = call.started_at
    answered_at = call.answered_at
    if name == "CallOffered":
        direction = str(r.get("direction") or "INBOUND")
        provider = str(r.get("provider") or "SIP")
        provider_call_id = str(r.get("provider_call_id") or "")
        account = str(r.get("provider_account_id") or "")
        started_at = at if started_at is None else min(started_at, at)
    elif name == "OutboundCallRequested":
        direction = "OUTBOUND"
        started_at = at if started_at is None else min(started_at, at)
    elif name == "OutboundAttempt":  # the provider that carried the call: the last attempt
        provider = str(r.get("provider") or provider)
        account = str(r.get("account_id") or "")
        provider_call_id = str(r.get("provider_call_id") or "")
    elif name == "CallAdmitted":
        plan_id = str(r.get("plan_id") or "")
    elif name == "CallAnswered":
        answered_at = at if answered_at is None else min(answered_at, at)
    if (
        state is call.state
        and business_id == call.business_id
        and direction == call.direction
        and provider == call.provider
        and account == call.provider_account_id
        and provider_call_id == call.provider_call_id
        and plan_id == call.plan_id
        and started_at == call.started_at
        and answered_at == call.answered_at
    ):
        return call
    return _facts(
        call,
        state,
        business_id,
        direction,
        provider,
        account,
        provider_call_id,
        plan_id,
        started_at,
        answered_at,
    )


def _decimal_text(value: Any) -> str | None:
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return str(d) if d.is_finite() else None


def _cost(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text).quantize(SCALE, ROUND_HALF_UP)


def _talk_ms(call: Call, name: str, end: dict[str, Any]) -> int | None:
    """How long the call talked, or None when it never connected."""
    if name != "CallEnded":
        return None
    if end.get("talk_ms") is not None:
        return int(end["talk_ms"])
    at = int(end["envelope"]["occurred_at"])
    if call.answered_at is not None:
        return max(0, at - call.answered_at)
    if end.get("reason") == "completed" and end.get("provider_duration_ms") is not None:
        return int(end["provider_duration_ms"])
    return None


def _why_not_connected(name: str, end: dict[str, Any]) -> str:
    if name == "CallRejected":
        return f"not connected: rejected {end.get('status_code')} {end.get('reason')}".strip()
    return f"not connected: {end.get('reason') or 'ended'}"


def rate(
    call: Call, name: str, end: dict[str, Any], config: RatingConfig, run: int
) -> dict[str, Any]:
    """The CallRated record for `call` ended by `end` (a CallEnded or CallRejected)."""
    env = end["envelope"]
    ended_at = int(env["occurred_at"])
    talk_ms = _talk_ms(call, name, end)
    started_at = call.started_at
    if started_at is None:  # the end came first (or alone): its own account of the call
        started_at = ended_at - int(end.get("setup_ms") or 0) - int(talk_ms or 0)
    business_id = call.business_id or str(end.get("business_id") or "")
    provider = call.provider
    if end.get("provider") and call.started_at is None:
        provider = str(end["provider"])
    plan_id = call.plan_id or config.plan_of_business(business_id)
    rate_plan_id = config.rate_plan_of(plan_id)
    version = version_at(config.versions(rate_plan_id), started_at) if rate_plan_id else None
    reason = ""
    if not business_id:
        reason = "no business"
    elif not plan_id:
        reason = f"business {business_id} has no plan"
    elif not rate_plan_id:
        reason = f"plan {plan_id} has no rate plan"
    elif version is None:
        reason = f"no version of rate plan {rate_plan_id} in effect at the call's start"
    connected = talk_ms is not None
    talk = talk_seconds(talk_ms) if talk_ms is not None else 0
    per_minute = connect_fee = charged = ZERO
    billable = 0
    if version is not None:
        per_minute = (
            version.outbound_per_minute
            if call.direction == "OUTBOUND"
            else version.inbound_per_minute
        )
        connect_fee = version.connect_fee
        if connected:
            billable = billable_seconds(
                talk, version.increment_first, version.increment_step, version.minimum_seconds
            )
            charged = amount(per_minute, billable, connect_fee)
    if not connected:
        reason = _why_not_connected(name, end) + (f"; {reason}" if reason else "")
    return {
        "envelope": envelope(
            str(env["call_id"]), PRODUCER, ended_at, derived_id(str(env["event_id"]), "CallRated")
        ),
        "business_id": business_id,
        "direction": call.direction,
        "provider": provider,
        "provider_account_id": call.provider_account_id,
        "provider_call_id": call.provider_call_id or str(end.get("provider_call_id") or ""),
        "started_at": started_at,
        "ended_at": ended_at,
        "connected": connected,
        "talk_seconds": talk,
        "billable_seconds": billable,
        "rate_plan_id": version.id if version else rate_plan_id,
        "rate_plan_version": version.version if version else 0,
        "increment": version.increment if version else "",
        "currency": version.currency if version else "",
        "per_minute": per_minute.quantize(SCALE),
        "connect_fee": connect_fee.quantize(SCALE),
        "amount": charged.quantize(SCALE),
        "provider_cost": _cost(call.cost),
        "provider_cost_currency": call.cost_currency,
        "reason": reason,
        "rating_run": run,
        "rated_event_id": str(env["event_id"]),
    }


def rated_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """A CallRated record for JSON (CLI, webhooks): decimals as exact strings."""
    return _json_safe(record)


__all__ = [
    "TRANSITIONS",
    "Call",
    "CallState",
    "Input",
    "RateVersion",
    "RatingConfig",
    "Result",
    "TransitionError",
    "amount",
    "billable_seconds",
    "handle",
    "input_for",
    "rate",
    "version_at",
]
