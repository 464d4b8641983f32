import argparse
import re
from pathlib import Path

import pytest

from streams.queries import parse_duration
from trunkline import cli
from trunkline.cli.main import build_parser
from trunkline.core.settings import Settings, SettingsError, env_var

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"


def test_defaults(tmp_path):
    s = Settings.from_env({"TRUNKLINE_STATE_DIR": str(tmp_path)})
    assert s.kafka_bootstrap == "127.0.0.1:19092"
    assert s.kafka_controller_port == 19093
    assert s.clickhouse_dsn == f"chdb://{tmp_path / 'clickhouse'}"
    assert s.topic_prefix == "trunkline."
    assert s.is_embedded_clickhouse
    assert (s.sink_priority, s.sink_flush_ms) == ("idle", 2_000)
    assert Settings.from_env({"TRUNKLINE_SINK_PRIORITY": "normal"}).sink_priority == "normal"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRUNKLINE_KAFKA_PORT": "99999"}, "TRUNKLINE_KAFKA_PORT=99999 is outside 1..65535"),
        ({"TRUNKLINE_KAFKA_PORT": "abc"}, "TRUNKLINE_KAFKA_PORT='abc' is not a port number"),
        ({"TRUNKLINE_KAFKA_BOOTSTRAP": "localhost"}, "'localhost' is not host:port"),
        ({"TRUNKLINE_CLICKHOUSE_DSN": "mysql://x"}, "scheme must be chdb://, http:// or https://"),
        ({"TRUNKLINE_TOPIC_PREFIX": "a b"}, "TRUNKLINE_TOPIC_PREFIX='a b'"),
        ({"TRUNKLINE_SINK_PRIORITY": "low"}, "TRUNKLINE_SINK_PRIORITY='low': must be one of"),
        ({"TRUNKLINE_SINK_FLUSH_MS": "0"}, "TRUNKLINE_SINK_FLUSH_MS"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("2h", 7200), ("7d", 604800), ("1w", 604800)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "5y", "-1h", "1.5h"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_config_check_ok(capsys):
    assert cli.main(["config", "check", str(EXAMPLE)]) == 0
    assert "valid (2 plans, 2 businesses" in capsys.readouterr().out


def test_config_check_refuses_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace('"127.0.0.0/8"', '"127.0.0.0/33"'))
    assert cli.main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "numbers[0] (id=abc).allowedSourceIps[1]: '127.0.0.0/33' is not an IP or CIDR" in err


def test_config_check_missing_file(tmp_path, capsys):
    assert cli.main(["config", "check", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_calls_list_rejects_bad_since(capsys):
    assert cli.main(["calls", "list", "--since", "yesterday"]) == 2
    assert "--since: 'yesterday' is not a duration" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--kafka-port", "0", "status"],
        ["--bootstrap", "nohost", "status"],
        ["frobnicate"],
        ["kafka", "sideways"],
        ["calls", "list", "--limit", "0"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_bad_env_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("TRUNKLINE_CLICKHOUSE_DSN", "ftp://x")
    assert cli.main(["status"]) == 2
    assert "TRUNKLINE_CLICKHOUSE_DSN" in capsys.readouterr().err


# -- settings: every variable, documented and validated ----------------------------------
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"  # the reference README links
CLI_PAGE = ROOT / "docs" / "cli.md"

#: a value each variable refuses (a new setting needs one here: it is validated too)
BAD_VALUES = {
    "TRUNKLINE_STATE_DIR": str(EXAMPLE),  # a file, not a directory
    "TRUNKLINE_CACHE_DIR": str(EXAMPLE),
    "TRUNKLINE_KAFKA_PORT": "70000",
    "TRUNKLINE_KAFKA_CONTROLLER_PORT": "x",
    "TRUNKLINE_KAFKA_BOOTSTRAP": "nohost",
    "TRUNKLINE_KAFKA_JVM_OPTS": "'-Xmx1g",
    "TRUNKLINE_TOPIC_PREFIX": "a/b",
    "TRUNKLINE_APP_ID": "a b",
    "TRUNKLINE_DECISION_PARTITIONS": "65",
    "TRUNKLINE_CLICKHOUSE_DSN": "mysql://db",
    "TRUNKLINE_SCHEMA_REGISTRY_URL": "registry:8081",
    "TRUNKLINE_WORKER_WEB_HOST": "http://x",
    "TRUNKLINE_WORKER_WEB_PORT": "0",
    "TRUNKLINE_SINK_WEB_HOST": "a b",
    "TRUNKLINE_SINK_WEB_PORT": "-1",
    "TRUNKLINE_SINK_PRIORITY": "high",
    "TRUNKLINE_SINK_FLUSH_MS": "2s",
    "TRUNKLINE_LOG_FORMAT": "xml",
    "TRUNKLINE_LOG_LEVEL": "verbose",
    "TRUNKLINE_SIP_LISTEN": "5060",
    "TRUNKLINE_SIP_FLOOD_RATE": "0",
    "TRUNKLINE_SIP_FLOOD_BURST": "-3",
    "TRUNKLINE_SIP_METRICS_LISTEN": "9060",
    "TRUNKLINE_SIP_TRUSTED_RATE": "lots",
    "TRUNKLINE_HTTP_LISTEN": "8080",
    "TRUNKLINE_PUBLIC_URL": "hooks.example.com",
    "TRUNKLINE_DECISION_TIMEOUT_MS": "0",
    "TRUNKLINE_REDIRECT_TIMEOUT_MS": "1.5",
    "TRUNKLINE_HEARTBEAT_TIMEOUT_MS": "-5",
    "TRUNKLINE_STATE_RETENTION_MS": "ten",
    "TRUNKLINE_BILLING_WEB_PORT": "65536",
    "TRUNKLINE_BILLING_RETENTION_MS": "1d",
    "TRUNKLINE_WEBHOOKS_WEB_PORT": "web",
    "TRUNKLINE_WEBHOOK_RETRY_SCHEDULE": "5s,soon",
    "TRUNKLINE_WEBHOOK_TIMEOUT_MS": "0",
    "TRUNKLINE_WEBHOOK_CONCURRENCY": "-3",
}


def _configuration_section() -> str:
    text = CONFIGURATION.read_text()
    start = text.index("\n## Environment variables")
    return text[start : text.index("\n## ", start + 1)]


def test_every_documented_variable_is_a_setting_and_every_setting_is_documented():
    documented = set(re.findall(r"^\| `(TRUNKLINE_[A-Z_]+)`", _configuration_section(), re.M))
    fields = {env_var(name) for name in Settings.model_fields}
    assert documented == fields


def test_every_setting_has_a_refused_value_listed_here():
    assert set(BAD_VALUES) == {env_var(name) for name in Settings.model_fields}


@pytest.mark.parametrize(("variable", "value"), sorted(BAD_VALUES.items()))
def test_a_bad_value_exits_2_naming_the_variable(variable, value, monkeypatch, capsys):
    monkeypatch.setenv(variable, value)
    assert cli.main(["status", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"trunkline: {variable}")
    assert "Traceback" not in err


@pytest.mark.parametrize("variable", sorted(BAD_VALUES))
def test_an_empty_variable_means_its_default(variable):
    default = Settings.from_env({})
    empty = Settings.from_env({variable: ""})
    if variable in ("TRUNKLINE_TOPIC_PREFIX", "TRUNKLINE_KAFKA_JVM_OPTS"):
        assert getattr(empty, variable.removeprefix("TRUNKLINE_").lower()) == ""
    else:
        assert empty == default


def test_derived_defaults_follow_the_variables_they_come_from(tmp_path):
    s = Settings.from_env({"TRUNKLINE_KAFKA_PORT": "29192", "TRUNKLINE_STATE_DIR": str(tmp_path)})
    assert (s.kafka_bootstrap, s.kafka_controller_port) == ("127.0.0.1:29192", 29193)
    assert s.clickhouse_dsn == f"chdb://{tmp_path}/clickhouse"
    assert Settings.from_env({"TRUNKLINE_DECISION_TIMEOUT_MS": "1500"}).decision_timeout_s == 1.5


def test_settings_reach_a_child_unchanged_through_its_environment(tmp_path):
    s = Settings.from_env(
        {
            "TRUNKLINE_STATE_DIR": str(tmp_path),
            "TRUNKLINE_KAFKA_BOOTSTRAP": "b1:9092,b2:9092",
            "TRUNKLINE_TOPIC_PREFIX": "",
            "TRUNKLINE_SCHEMA_REGISTRY_URL": "http://registry:8081",
            "TRUNKLINE_DECISION_TIMEOUT_MS": "750",
        }
    )
    assert Settings.from_env(s.to_env()) == s


def test_from_env_reads_only_the_mapping_it_is_given(monkeypatch):
    monkeypatch.setenv("TRUNKLINE_TOPIC_PREFIX", "from-the-process.")
    assert Settings.from_env({}).topic_prefix == "trunkline."
    assert Settings.from_env().topic_prefix == "from-the-process."


def test_overrides_are_validated_like_the_environment():
    s = Settings.from_env({})
    slower = s.with_overrides(decision_timeout_s=2.5, worker_web_port=None)
    assert (slower.decision_timeout_ms, slower.worker_web_port) == (2500, 6066)
    assert s.with_overrides(worker_web_port=7000).worker_url == "http://127.0.0.1:7000"
    with pytest.raises(SettingsError, match="TRUNKLINE_WORKER_WEB_PORT=0 is outside"):
        s.with_overrides(worker_web_port=0)
    with pytest.raises(SettingsError, match="unknown setting"):
        s.with_overrides(worker_port=1)


# -- the CLI's commands and flags are the ones README documents --------------------------
def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def _cli_rows() -> list[str]:
    section = CLI_PAGE.read_text()
    rows = re.findall(r"^\| `([^`]+)` \|", section, re.M)
    return [row.replace("\\|", "|") for row in rows]  # `\|` is a | inside a table cell


def test_the_cli_page_documents_every_command_and_the_readme_maps_each():
    documented = {row.split()[0] for row in _cli_rows()}
    assert documented == set(_subcommands(build_parser()))
    text = README.read_text()
    start = text.index("\n## Commands")
    mapped = set(re.findall(r"`([a-z-]+)[ `]", text[start : text.index("\n## ", start + 1)]))
    assert documented <= mapped, sorted(documented - mapped)


@pytest.mark.parametrize("row", _cli_rows())
def test_every_documented_command_and_flag_exists(row):
    parser = build_parser()
    words = row.split()
    while words and words[0] in _subcommands(parser):
        parser = _subcommands(parser)[words.pop(0)]
    if words and "|" in words[0]:  # e.g. `kafka up|down|status|fetch`: the choices
        positional = next(a for a in parser._actions if a.choices and not a.option_strings)
        assert set(words[0].split("|")) <= set(positional.choices)
    flags = set(re.findall(r"--[a-z][a-z-]*", row))
    assert flags <= _options(parser), f"{row}: {flags - _options(parser)} not accepted"


def test_the_global_flags_are_documented():
    text = CLI_PAGE.read_text()
    usage = re.search(r"^`trunkline (\[.*\]) COMMAND`", text, re.M)
    assert usage is not None
    flags = set(re.findall(r"--[a-z][a-z-]*", usage.group(1)))
    assert flags == _options(build_parser()) - {"-h", "--help"}
