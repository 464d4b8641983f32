"""The providers section: accounts, secret references (never values), providerAccountId."""

from __future__ import annotations

import pytest
import yaml

from edge.webhook.accounts import Accounts, account_from_record
from edge.webhook.base import Provider, WebhookError
from trunkline.core.config import ConfigError, SecretError, load_config, resolve_secret

TELNYX_KEY = "dGVzdC1rZXktMzItYnl0ZXMtbG9uZy4uLi4uLi4uLi4="  # 32 bytes, base64

BASE = """
plans: [{id: p, maxConcurrentCalls: 2}]
businesses: [{id: b, name: B, plan: p}]
routes: [{id: r, businessId: b}]
"""

PROVIDERS = f"""
providers:
  - {{id: twilio-main, kind: Twilio, accountSid: ACxxxxxxxx, authToken: {{env: TWILIO_AUTH_TOKEN}}}}
  - {{id: telnyx-main, kind: Telnyx, apiKey: {{env: TELNYX_API_KEY}}, publicKey: "{TELNYX_KEY}",
     connectionId: "conn-1"}}
  - {{id: vonage-main, kind: Vonage, applicationId: "app-1",
     privateKey: {{file: keys/vonage.pem}}, signatureSecret: {{env: VONAGE_SIGNATURE_SECRET}}}}
"""


def number(**extra: object) -> str:
    fields = {
        "id": "tw-1",
        "businessId": "b",
        "provider": "Twilio",
        "number": "+15557654321",
        "routeId": "r",
        "regionId": "us-east-1",
        **extra,
    }
    return "numbers: [" + yaml.safe_dump(fields, default_flow_style=True).strip() + "]\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(text)
    return [str(p) for p in info.value.problems]


def test_the_issue_example_is_valid_and_holds_only_references():
    config = load_config(BASE + PROVIDERS + number(providerAccountId="twilio-main"))
    accounts = config.section("providers")
    assert accounts["twilio-main"].avro_name == "ProviderAccount"
    assert accounts["twilio-main"].body["secret_refs"] == {"authToken": "env:TWILIO_AUTH_TOKEN"}
    assert accounts["twilio-main"].body["account_sid"] == "ACxxxxxxxx"
    assert accounts["telnyx-main"].body["public_key"] == TELNYX_KEY
    assert accounts["vonage-main"].body["secret_refs"] == {
        "privateKey": "file:keys/vonage.pem",
        "signatureSecret": "env:VONAGE_SIGNATURE_SECRET",
    }
    assert config.section("numbers")["tw-1"].body["provider_account_id"] == "twilio-main"


def test_provider_account_id_may_be_left_out_when_the_kind_has_one_account():
    config = load_config(BASE + PROVIDERS + number())
    assert config.section("numbers")["tw-1"].body["provider_account_id"] == "twilio-main"


def test_provider_account_id_is_required_with_two_accounts_of_the_kind():
    second = "  - {id: twilio-2, kind: Twilio, accountSid: ACyy, authToken: {env: T2}}\n"
    found = problems(BASE + PROVIDERS + second + number())
    assert found == [
        "numbers[0] (id=tw-1).providerAccountId: is required: 2 Twilio accounts are "
        "configured (twilio-main, twilio-2)"
    ]


@pytest.mark.parametrize(
    ("account", "message"),
    [
        ("nope", "account 'nope' is not defined in providers"),
        ("telnyx-main", "account 'telnyx-main' is a Telnyx account, the number is a Twilio number"),
    ],
)
def test_provider_account_id_must_name_an_account_of_the_kind(account, message):
    assert problems(BASE + PROVIDERS + number(providerAccountId=account)) == [
        f"numbers[0] (id=tw-1).providerAccountId: {message}"
    ]


def test_a_literal_secret_is_refused_naming_the_field_and_not_echoing_it():
    text = BASE + "providers: [{id: t, kind: Twilio, accountSid: AC1, authToken: s3cr3t-value}]\n"
    found = problems(text)
    assert found == [
        "providers[0] (id=t).authToken: is a secret: write a reference {env: VARIABLE} or "
        "{file: PATH}, not the value itself"
    ]
    assert "s3cr3t-value" not in "".join(found)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{env: 'not a name'}", "'not a name' is not an environment variable name"),
        ("{vault: x}", "a secret reference has exactly one key, env or file"),
        ("{env: ''}", "{env: ...} needs a non-empty variable name"),
    ],
)
def test_bad_references_are_refused(value, message):
    text = BASE + f"providers: [{{id: t, kind: Twilio, accountSid: AC1, authToken: {value}}}]\n"
    assert problems(text) == [f"providers[0] (id=t).authToken: {message}"]


def test_required_secrets_and_fields_per_kind():
    text = BASE + "providers: [{id: t, kind: Telnyx, publicKey: 'abc'}, {id: v, kind: Vonage}]\n"
    assert sorted(problems(text)) == [
        "providers[0] (id=t).apiKey: is required",
        "providers[0] (id=t).publicKey: must be the base64 Ed25519 public key (32 bytes)",
        "providers[1] (id=v).applicationId: is required",
        "providers[1] (id=v).signatureSecret: is required",
    ]


def test_resolve_secret_names_what_is_missing():
    assert resolve_secret("env:TOKEN", {"TOKEN": "v"}) == "v"
    with pytest.raises(SecretError, match="environment variable TOKEN is not set"):
        resolve_secret("env:TOKEN", {})

    def read(path: str) -> str:
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.raises(SecretError, match=r"file keys/x\.pem cannot be read"):
        resolve_secret("file:keys/x.pem", {}, read)
    assert resolve_secret("file:k", {}, lambda p: "tok\n") == "tok"


def test_an_account_with_an_unresolvable_secret_is_marked_and_never_shows_values():
    record = load_config(BASE + PROVIDERS).section("providers")["vonage-main"].to_avro(0)
    account = account_from_record(
        record, {"VONAGE_SIGNATURE_SECRET": "sig"}, lambda p: (_ for _ in ()).throw(OSError(2, "x"))
    )
    assert "privateKey: file keys/vonage.pem cannot be read" in account.missing
    assert "sig" not in repr(account)
    with pytest.raises(WebhookError) as info:
        account.secret("signatureSecret")
    assert info.value.status == 503 and "keys/vonage.pem" in info.value.reason


def test_accounts_are_found_by_identifier_explicit_id_or_as_the_only_one():
    accounts = Accounts()
    for rec in load_config(BASE + PROVIDERS).section("providers").values():
        accounts.put(account_from_record(rec.to_avro(0), {}, lambda p: "x"))
    assert accounts.find(Provider.TWILIO, account_sid="ACxxxxxxxx").id == "twilio-main"
    assert accounts.find(Provider.TELNYX, connection_id="conn-1").id == "telnyx-main"
    assert accounts.find(Provider.VONAGE, "vonage-main").id == "vonage-main"
    assert accounts.find(Provider.VONAGE).id == "vonage-main"
    for call in (
        lambda: accounts.find(Provider.TWILIO, account_sid="ACother"),
        lambda: accounts.find(Provider.TWILIO, "telnyx-main"),
    ):
        with pytest.raises(WebhookError) as info:
            call()
        assert info.value.status == 403 and info.value.label == "unknown_account"
