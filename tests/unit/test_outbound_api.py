"""The REST API's pure part: keys by SHA-256, request bodies (every refusal names its
field), numbers, routes and the failover order, idempotent queue ids."""

from __future__ import annotations

import hashlib
import json

import pytest

from edge.webhook import api

KEY = "tl-secret-key"
KEYS = {hashlib.sha256(KEY.encode()).hexdigest(): api.ApiKey("k1", "b1",
        hashlib.sha256(KEY.encode()).hexdigest())}  # fmt: skip


def directory() -> api.Directory:
    d = api.Directory()
    d.kinds = {"tw": "TWILIO", "tx": "TELNYX", "vg": "VONAGE"}
    d.businesses = {"b1": {"id": "b1", "outbound_providers": ["tw", "vg", "tx"]}}
    d.routes = {"r1": {"id": "r1", "business_id": "b1"}, "r2": {"id": "r2", "business_id": "b2"}}
    for nid, business, provider, account, number, region in [
        ("n-tw", "b1", "TWILIO", "tw", "+15550000001", "eu"),
        ("n-tx-us", "b1", "TELNYX", "tx", "+15550000002", "us"),
        ("n-tx-eu", "b1", "TELNYX", "tx", "+15550000003", "eu"),
        ("n-sip", "b1", "SIP", "", "+15550000004", "eu"),
        ("n-other", "b2", "TWILIO", "tw", "+15550000005", "eu"),
    ]:
        d.numbers[nid] = {"id": nid, "business_id": business, "provider": provider,
                          "provider_account_id": account, "number": number,
                          "region_id": region}  # fmt: skip
    return d


def build(body: dict, key: str = "", d: api.Directory | None = None) -> dict:
    req = api.parse_body(json.dumps(body).encode(), "application/json")
    return api.outbound_request(
        req, KEYS[hashlib.sha256(KEY.encode()).hexdigest()], d or directory(),
        dialer_id="webhook-1", idempotency_key=key, fresh_id=lambda: "fresh", now=1.0,
    )  # fmt: skip


def test_keys_are_compared_by_their_digest():
    assert api.authenticate(f"Bearer {KEY}", KEYS).id == "k1"
    for header in ("", "Bearer", "Basic abc", f"Bearer {KEY}x", "bearer   "):
        with pytest.raises(api.ApiError) as err:
            api.authenticate(header, KEYS)
        assert err.value.status == 401 and err.value.field == "Authorization"
    assert KEY not in repr(KEYS)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"fromNumberId": "n-tw"}, "to"),
        ({"to": "004915112345678", "fromNumberId": "n-tw"}, "to"),
        ({"to": "+4915112345678"}, "fromNumberId"),
        ({"to": "+4915112345678", "fromNumberId": "n tw"}, "fromNumberId"),
        ({"to": "+4915112345678", "fromNumberId": "n-tw", "providers": "tw"}, "providers"),
        ({"to": "+4915112345678", "fromNumberId": "n-tw", "providers": ["tw", "tw"]},
         "providers[1]"),
        ({"to": "+4915112345678", "fromNumberId": "n-tw", "metadata": []}, "metadata"),
        ({"to": "+4915112345678", "fromNumberId": "n-tw", "metadata": {"a": True}},
         "metadata.a"),
        ({"to": "+4915112345678", "fromNumberId": "n-tw", "timeout": 600}, "timeout"),
        ({"to": "+4915112345678", "fromNumberId": "n-tw", "extra": 1}, "extra"),
    ],
)  # fmt: skip
def test_bad_bodies_name_the_field(body, field):
    with pytest.raises(api.ApiError) as err:
        api.parse_body(json.dumps(body).encode(), "application/json")
    assert err.value.status == 400 and err.value.field == field


def test_not_json_and_wrong_type():
    with pytest.raises(api.ApiError) as err:
        api.parse_body(b"{", "application/json")
    assert err.value.status == 400 and err.value.field == "body"
    with pytest.raises(api.ApiError) as err:
        api.parse_body(b"to=1", "application/x-www-form-urlencoded")
    assert err.value.status == 415


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"fromNumberId": "n-none"}, 404, "fromNumberId"),
        ({"fromNumberId": "n-other"}, 403, "fromNumberId"),
        ({"fromNumberId": "n-sip"}, 400, "fromNumberId"),
        ({"fromNumberId": "n-tw", "routeId": "r2"}, 404, "routeId"),
        ({"fromNumberId": "n-tw", "providers": ["tx"]}, 400, "providers"),
        ({"fromNumberId": "n-tw", "providers": ["tw", "nope"]}, 400, "providers[1]"),
        ({"fromNumberId": "n-tw", "providers": ["tw", "vg"]}, 400, "providers[1]"),  # no number
    ],
)  # fmt: skip
def test_numbers_routes_and_providers_are_checked(body, status, field):
    with pytest.raises(api.ApiError) as err:
        build({"to": "+4915112345678", **body})
    assert (err.value.status, err.value.field) == (status, field)


def test_default_order_starts_with_the_number_and_skips_accounts_without_a_number():
    record = build({"to": "+4915112345678", "fromNumberId": "n-tw"})
    assert record["providers"] == ["tw", "tx"]  # vg: the business has no number there
    # the same region's number first on another account
    assert record["from_numbers"] == {"tw": "+15550000001", "tx": "+15550000003"}
    assert record["provider"] == "TWILIO" and record["edge_id"] == "webhook-1"
    assert record["api_key_id"] == "k1" and KEY not in json.dumps(record)


def test_idempotency_key_names_the_call_and_the_body_its_digest():
    body = {"to": "+4915112345678", "fromNumberId": "n-tw", "metadata": {"b": 1, "a": "x"}}
    a, b = build(body, key="order-1"), build(dict(reversed(list(body.items()))), key="order-1")
    assert a["envelope"]["call_id"] == b["envelope"]["call_id"] != "fresh"
    assert a["request_sha256"] == b["request_sha256"]
    c = build({**body, "to": "+4915199999999"}, key="order-1")
    assert c["envelope"]["call_id"] == a["envelope"]["call_id"]
    assert c["request_sha256"] != a["request_sha256"]
    assert build(body)["envelope"]["call_id"] == "fresh"


def test_refusals_map_to_http():
    assert api.refusal(486, "plan limit", None).status == 429
    assert api.refusal(486, "plan limit", None).retry_after == 5
    assert api.refusal(503, "no live backend", 5).status == 503
    assert api.refusal(404, "number x is not configured", None).field == "fromNumberId"
    assert api.refusal(404, "route r is not configured", None).field == "routeId"
    assert api.refusal(403, "business b1 is not active", None).status == 403
