"""The project's topics, declared once. `trunkline topics apply` creates them from here.

Keys decide partitions, and partitions decide who owns an invariant (DESIGN.md: one writer
per invariant). Producers that are not Faust must hash keys the way Faust (aiokafka) does:
confluent-kafka with ``partitioner=murmur2_random``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from schemas.registry import LIFECYCLE_EVENTS

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    suffix: str
    partitions: int
    compacted: bool
    retention_ms: int | None  # None: broker default / infinite for compacted topics
    key: str
    records: tuple[str, ...]
    doc: str
    #: its partition count decides which worker owns a key's state (the decision topics
    #: and the tables' changelogs): another count on an existing topic is an error, never
    #: altered, since records of one key would land in another partition
    keyed_state: bool = False

    def name(self, prefix: str) -> str:
        return f"{prefix}{self.suffix}"

    def configs(self) -> dict[str, str]:
        cfg = {"cleanup.policy": "compact" if self.compacted else "delete"}
        if self.compacted:
            # Config is small and read at start-up: compact eagerly, keep tombstones a day
            # so a replaying reader sees deletions.
            cfg["min.cleanable.dirty.ratio"] = "0.1"
            cfg["delete.retention.ms"] = str(DAY_MS)
            cfg["retention.ms"] = "-1"
        elif self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        return cfg


CALL_EVENTS = TopicSpec(
    "call-events",
    6,
    False,
    30 * DAY_MS,
    "call_id",
    LIFECYCLE_EVENTS,
    "Every call lifecycle event: the history. The ClickHouse sink and replays read it.",
)
# The decision topics have TRUNKLINE_DECISION_PARTITIONS partitions (default 2;
# `decision_topics`): aiokafka names every assigned partition in every fetch (no
# incremental sessions), so each one costs the worker and the broker on every fetch
# (docs/design.md; measured in docs/benchmarks.md, 2026-11-26 09:32), and the count
# bounds how many workers share the decision path. The specs below carry the default.
DEFAULT_DECISION_PARTITIONS = 2
ADMISSION = TopicSpec(
    "admission", DEFAULT_DECISION_PARTITIONS, False, 7 * DAY_MS, "business_id",
    ("CallOffered", "OutboundCallRequested", "CallEnded", "CallRejected", "PartitionTick"),
    "Admission's input: offers from edges and the API, every end or later rejection (slot "
    "release), ticks.",
    keyed_state=True,
)  # fmt: skip
ROUTING = TopicSpec(
    "routing", DEFAULT_DECISION_PARTITIONS, False, 7 * DAY_MS, "region_id",
    ("CallAdmitted", "CallAccepted", "CallEnded", "CallRejected", "RoutingTick", "PartitionTick"),
    "Routing's input: admitted calls, acceptances, releases forwarded by admission, ticks.",
    keyed_state=True,
)  # fmt: skip
HEARTBEATS = TopicSpec(
    "backend-heartbeats", DEFAULT_DECISION_PARTITIONS, False, 3600 * 1000, "region_id",
    ("BackendHeartbeat",),
    "Media nodes' liveness and load, keyed by region: co-partitioned with routing.",
    keyed_state=True,
)  # fmt: skip
DECISIONS = TopicSpec(
    "decisions", 6, False, DAY_MS, "edge_id", ("CallRouted", "CallRejected"),
    "Final decisions for the edge that holds the call; each edge reads its key's partition.",
)  # fmt: skip
ASSIGNMENTS = TopicSpec(
    "assignments", 6, False, DAY_MS, "backend_id", ("CallRouted",),
    "Calls routed to a media node; each node reads its key's partition.",
)  # fmt: skip
OUTBOUND = TopicSpec(
    "outbound", 6, False, DAY_MS, "dialer_id",
    ("OutboundCallRequested", "OutboundAttempt", "OutboundAttemptFailed", "OutboundReport",
     "CallEnded"),
    "The dialers' journal: each dialer (one per HTTP edge process) writes its outbound calls' "
    "requests, attempts and ends under its id, the webhook edges add the providers' reports "
    "for them; a restarted dialer reads its key back to resume pending calls.",
)  # fmt: skip
DEAD_LETTERS = TopicSpec(
    "dead-letters",
    1,
    False,
    30 * DAY_MS,
    "source topic/partition/offset",
    ("<raw bytes>",),
    "Records a consumer could not decode, parked with headers naming where they came from.",
)
PLANS = TopicSpec("config.plans", 1, True, None, "id", ("Plan",), "Plans (compacted).")
BUSINESSES = TopicSpec(
    "config.businesses", 1, True, None, "id", ("Business",), "Businesses (compacted)."
)
ROUTES = TopicSpec("config.routes", 1, True, None, "id", ("Route",), "Routes (compacted).")
NUMBERS = TopicSpec(
    "config.numbers", 1, True, None, "id", ("PhoneNumber",), "Phone numbers (compacted)."
)
BACKENDS = TopicSpec(
    "config.backends", 1, True, None, "id", ("BackendServer",), "Backend servers (compacted)."
)
BYPASS_RULES = TopicSpec(
    "config.bypass-rules", 1, True, None, "id", ("BypassRule",), "Admin bypass rules (compacted)."
)
RATE_PLANS = TopicSpec(
    "config.rate-plans", 1, True, None, "id@version", ("RatePlan",),
    "Rate plan versions (compacted): prices as decimal strings, increments, effective dates.",
)  # fmt: skip
WEBHOOK_SUBSCRIPTIONS = TopicSpec(
    "config.webhook-subscriptions", 1, True, None, "id", ("WebhookSubscription",),
    "Lifecycle webhook subscribers (compacted): URL, events, business, secret reference.",
)  # fmt: skip
PROVIDERS = TopicSpec(
    "config.providers", 1, True, None, "id", ("ProviderAccount",),
    "Provider accounts (compacted): ids, public identifiers, secret references (never values).",
)  # fmt: skip
API_KEYS = TopicSpec(
    "config.api-keys", 1, True, None, "id", ("ApiKey",),
    "REST API keys (compacted): id, business, SHA-256 of the key (never the key).",
)  # fmt: skip

#: config kind (the YAML section) -> its topic
CONFIG_TOPICS: dict[str, TopicSpec] = {
    "plans": PLANS,
    "businesses": BUSINESSES,
    "routes": ROUTES,
    "numbers": NUMBERS,
    "backends": BACKENDS,
    "bypassRules": BYPASS_RULES,
    "providers": PROVIDERS,
    "apiKeys": API_KEYS,
    "ratePlans": RATE_PLANS,
    "webhookSubscriptions": WEBHOOK_SUBSCRIPTIONS,
}
#: the sections the worker keeps as tables (admission and routing read them); provider
#: accounts and API keys are read only by the HTTP edge, and each partition a worker follows costs
#: it on every fetch (docs/design.md)
WORKER_CONFIG_SECTIONS = ("plans", "businesses", "routes", "numbers", "backends", "bypassRules")


def decision_topics(
    partitions: int = DEFAULT_DECISION_PARTITIONS,
) -> tuple[TopicSpec, TopicSpec, TopicSpec]:
    """admission, routing and backend-heartbeats with `partitions` partitions (the
    setting TRUNKLINE_DECISION_PARTITIONS)."""
    return (
        replace(ADMISSION, partitions=partitions),
        replace(ROUTING, partitions=partitions),
        replace(HEARTBEATS, partitions=partitions),
    )


# Billing and lifecycle webhooks (docs/design.md). `billing` is keyed and partitioned like
# call-events (the call id, 6 partitions): a call's CallRated lands in the partition number
# its history has, and the webhook service's state is partitioned the same way.
BILLING = TopicSpec(
    "billing", CALL_EVENTS.partitions, False, 400 * DAY_MS, "call_id", ("CallRated",),
    "Each finished call's charge (CallRated), from the billing worker; ClickHouse "
    "billing_records and call.rated webhooks read it.",
)  # fmt: skip
WEBHOOK_STATE = TopicSpec(
    "webhook-state", CALL_EVENTS.partitions, True, None, "e/<call> | d/<sub>/<event> | s/<sub>",
    ("json",),
    "The webhook service's durable state: each call's entry, each pending or settled "
    "delivery (body, attempts, next attempt time), disabled subscriptions; partitioned by "
    "call id. A restarted service reads it back and resumes every pending delivery.",
)  # fmt: skip
WEBHOOK_DELIVERIES = TopicSpec(
    "webhook-deliveries", CALL_EVENTS.partitions, False, 30 * DAY_MS, "call_id",
    ("WebhookAttempt",),
    "Every delivery attempt and its outcome (the delivery log): ClickHouse webhook_deliveries.",
)  # fmt: skip
WEBHOOK_COMMANDS = TopicSpec(
    "webhook-commands", 1, False, 7 * DAY_MS, "call_id", ("WebhookCommand",),
    "Operators' requests to the webhook service: redeliver a delivery, enable a subscription.",
)  # fmt: skip


GENERATIONS = TopicSpec(
    "table-generations", 1, True, None, "app id", ("json",),
    "The workers' active table generation per app id (compacted; `replay rebuild --swap` "
    "writes it, workers read it at start): trunkline/core/generations.py.",
)  # fmt: skip


def all_topics(decision_partitions: int = DEFAULT_DECISION_PARTITIONS) -> tuple[TopicSpec, ...]:
    """Every topic under the topic prefix, the decision topics with their count."""
    return (
        CALL_EVENTS,
        *decision_topics(decision_partitions),
        DECISIONS,
        ASSIGNMENTS,
        OUTBOUND,
        DEAD_LETTERS,
        BILLING,
        WEBHOOK_STATE,
        WEBHOOK_DELIVERIES,
        WEBHOOK_COMMANDS,
        GENERATIONS,
        *CONFIG_TOPICS.values(),
    )


ALL_TOPICS: tuple[TopicSpec, ...] = all_topics()


def internal_topics(
    app_id: str, decision_partitions: int = DEFAULT_DECISION_PARTITIONS
) -> tuple[TopicSpec, ...]:
    """Topics Faust uses for this app id, declared here so they exist (with the right
    partition counts) before a worker starts: the broker does not auto-create, and Faust
    racing its own topic creation against metadata crashes agents (PartitionsMismatch).
    The tables' changelogs are co-partitioned with the decision topics."""
    n = decision_partitions
    return (
        TopicSpec(f"{app_id}-admission-slots-changelog", n, True, None, "call_id", ("json",),
                  "Admission's slot per call (Faust table changelog).", keyed_state=True),
        TopicSpec(f"{app_id}-routing-reservations-changelog", n, True, None, "call_id",
                  ("json",), "Routing's reservation per call (Faust changelog).",
                  keyed_state=True),
        TopicSpec(f"{app_id}-routing-heartbeats-changelog", n, True, None, "backend_id",
                  ("json",), "Latest heartbeat per backend (Faust changelog).",
                  keyed_state=True),
        TopicSpec(f"{app_id}-routing-ticks-changelog", n, True, None, "region_id", ("json",),
                  "Routing's last tick and tick gap per region.", keyed_state=True),
        TopicSpec(f"{app_id}-__assignor-__leader", 1, False, None, "-", ("-",),
                  "Faust's leader election."),
    )  # fmt: skip


#: the billing worker's Faust app id: its own consumer group and tables
def billing_app_id(app_id: str) -> str:
    return f"{app_id}-billing"


def generation_app_id(app_id: str, generation: int) -> str:
    """A worker app's effective Faust id in table generation `generation`: the id itself
    for 0 (deployments from before generations), `<id>-g<n>` after. Faust derives the
    consumer group, the changelogs and the leader topic from it (docs/design.md)."""
    if generation < 0:
        raise ValueError(f"table generation {generation} is negative")
    return app_id if generation == 0 else f"{app_id}-g{generation}"


#: the config sections the billing worker keeps as tables
BILLING_CONFIG_SECTIONS = ("plans", "businesses", "ratePlans")


def billing_internal_topics(app_id: str, generation: int = 0) -> tuple[TopicSpec, ...]:
    """The billing worker's Faust topics (its app id is `billing_app_id(app_id)` in
    `generation`): the per-call rating table's changelog, co-partitioned with
    call-events, and its leader topic. Declared for the same reason as `internal_topics`."""
    billing = generation_app_id(billing_app_id(app_id), generation)
    return (
        TopicSpec(f"{billing}-billing-calls-changelog", CALL_EVENTS.partitions, True, None,
                  "call_id", ("json",), "The billing machine's state per call (Faust changelog)."),
        TopicSpec(f"{billing}-__assignor-__leader", 1, False, None, "-", ("-",),
                  "Faust's leader election (billing worker)."),
    )  # fmt: skip
