from pathlib import Path

import pytest
import yaml

from trunkline.core.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"


def base() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def problems_of(data) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return [str(p) for p in info.value.problems]


def test_example_is_valid_and_normalised():
    config = load_config(EXAMPLE.read_text())
    numbers = config.section("numbers")
    assert numbers["abc"].body == {
        "id": "abc",
        "business_id": "123",
        "provider": "SIP",
        "number": "+15551234567",
        "route_id": "route-abc123",
        "region_id": "us-east-1",
        "is_e164": True,
        "allowed_source_ips": ["203.0.113.10", "127.0.0.0/8"],
        "provider_account_id": "",
    }
    assert numbers["globex-twilio"].body["provider"] == "TWILIO"  # case-insensitive
    assert config.section("businesses")["123"].body["plan_id"] == "starter"  # int id -> str
    assert config.section("bypassRules")["123-backend-1"].body["backend_id"] == "backend-1"
    # sections are published in dependency order
    assert [r.section for r in config.records][:2] == ["plans", "plans"]


def test_event_ids_are_deterministic_per_content():
    a = load_config(EXAMPLE.read_text()).section("plans")["starter"]
    b = load_config(EXAMPLE.read_text()).section("plans")["starter"]
    assert a.event_id() == b.event_id()
    data = base()
    data["plans"][0]["maxConcurrentCalls"] = 3
    c = parse_config(data).section("plans")["starter"]
    assert c.event_id() != a.event_id()


def _mutate(fn):
    data = base()
    fn(data)
    return problems_of(data)


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (
            lambda d: d["numbers"][0]["allowedSourceIps"].append("203.0.113.300"),
            "numbers[0] (id=abc).allowedSourceIps[2]: '203.0.113.300' is not an IP or CIDR",
        ),
        (
            lambda d: d["numbers"][0]["allowedSourceIps"].append("10.0.0.1/8"),
            "numbers[0] (id=abc).allowedSourceIps[2]: '10.0.0.1/8' is not an IP or CIDR",
        ),
        (
            lambda d: d["numbers"][0].update(number="5551234567"),
            "numbers[0] (id=abc).number: '5551234567' is not E.164",
        ),
        (
            lambda d: d["numbers"][0].update(routeId="route-missing"),
            "numbers[0] (id=abc).routeId: route 'route-missing' is not defined in routes",
        ),
        (
            lambda d: d["numbers"][0].update(businessId=999),
            "numbers[0] (id=abc).businessId: business '999' is not defined in businesses",
        ),
        (
            lambda d: d["businesses"][0].update(plan="platinum"),
            "businesses[0] (id=123).plan: plan 'platinum' is not defined in plans",
        ),
        (
            lambda d: d["plans"].append({"id": "starter", "maxConcurrentCalls": 5}),
            "plans[2] (id=starter).id: duplicate id 'starter' (also plans[0])",
        ),
        (
            lambda d: d["numbers"][0].update(provider="Plivo"),
            "numbers[0] (id=abc).provider: unknown provider 'Plivo'",
        ),
        (lambda d: d["numbers"][0].pop("regionId"), "numbers[0] (id=abc).regionId: is required"),
        (
            lambda d: d["numbers"][0].update(alowedSourceIps=[]),
            "numbers[0] (id=abc).alowedSourceIps: unknown field",
        ),
        (
            lambda d: d["plans"][0].update(maxConcurrentCalls=0),
            "plans[0] (id=starter).maxConcurrentCalls: must be an integer from 1 to 1000000, got 0",
        ),
        (
            lambda d: d["businesses"][0].update(active="yes"),
            "businesses[0] (id=123).active: must be true or false, got 'yes'",
        ),
        (
            lambda d: d["backends"][0].update(sipAddress="127.0.0.1"),
            "backends[0] (id=backend-1).sipAddress: '127.0.0.1' is not host:port",
        ),
        (
            lambda d: d["backends"][0].update(mediaUrl="http://x"),
            "backends[0] (id=backend-1).mediaUrl: 'http://x' must be a ws:// or wss:// URL",
        ),
        (
            lambda d: d["bypassRules"][0].update(backendId="backend-9"),
            "bypassRules[0].backendId: backend 'backend-9' is not defined in backends",
        ),
        (
            lambda d: d["numbers"][1].update(routeId="route-abc123"),
            "numbers[1] (id=globex-twilio).routeId: route 'route-abc123' belongs to business '123'",
        ),
        (
            lambda d: d["numbers"][1].update(number="+15551234567", provider="SIP"),
            "numbers[1] (id=globex-twilio).number: '+15551234567' (SIP) is already registered",
        ),
        (lambda d: d.update(trunks=[]), "trunks: unknown section"),
    ],
)
def test_invalid_config_names_record_and_field(mutation, expected):
    found = _mutate(mutation)
    assert any(p.startswith(expected) for p in found), found


def test_non_e164_number_allowed_when_flag_false():
    data = base()
    data["numbers"][0].update(number="1001", isE164Number=False)
    assert parse_config(data).section("numbers")["abc"].body["number"] == "1001"


def test_all_problems_reported_at_once():
    data = base()
    data["numbers"][0]["allowedSourceIps"] = ["nope"]
    data["businesses"][0]["plan"] = "gone"
    assert len(problems_of(data)) == 2


def test_yaml_syntax_error_has_position():
    with pytest.raises(ConfigError, match=r"line 3, column \d+: not valid YAML"):
        load_config("plans:\n  - {id: a, maxConcurrentCalls: 1\n")


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "42\n"])
def test_document_must_be_a_mapping(text):
    with pytest.raises(ConfigError, match="<file>: must be a mapping"):
        load_config(text)


def test_api_keys_hold_only_a_digest_and_outbound_providers_name_accounts():
    data = base()
    data["providers"] = [{"id": "twilio-main", "kind": "Twilio", "accountSid": "AC123",
                          "authToken": {"env": "T"}}]  # fmt: skip
    data["businesses"][0]["outboundProviders"] = ["twilio-main"]
    data["apiKeys"] = [{"id": "k1", "businessId": 123, "sha256": "A" * 64}]
    config = parse_config(data)
    assert config.section("apiKeys")["k1"].body == {
        "id": "k1", "business_id": "123", "sha256": "a" * 64
    }  # fmt: skip
    assert config.section("businesses")["123"].body["outbound_providers"] == ["twilio-main"]
    data["businesses"][0]["outboundProviders"] = ["nope", "nope"]
    data["apiKeys"] = [
        {"id": "k1", "businessId": 999, "sha256": "xyz"},
        {"id": "k2", "businessId": 123, "sha256": "b" * 64, "key": "plain-secret"},
        {"id": "k3", "businessId": 123, "sha256": "b" * 64},
    ]
    found = problems_of(data)
    assert any("outboundProviders: lists an id twice" in p for p in found)
    assert any("outboundProviders[0]: provider account 'nope' is not defined" in p for p in found)
    assert any("apiKeys[0] (id=k1).sha256: must be the lowercase hex SHA-256" in p for p in found)
    assert any("apiKeys[0] (id=k1).businessId: business '999'" in p for p in found)
    assert any("apiKeys[1] (id=k2).key: is a secret" in p for p in found)
    assert any("apiKeys[2] (id=k3).sha256: the same key is also api key 'k2'" in p for p in found)
    assert not any("plain-secret" in p for p in found)
