"""compose.yaml cannot run here (no Docker); check what reading can check."""

from pathlib import Path
from urllib.parse import urlparse

import yaml

from trunkline.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_names_every_service():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {
        "kafka", "clickhouse", "topics", "worker", "sink", "sip-edge", "billing-worker", "webhooks",
    } <= set(services)  # fmt: skip
    sink_env = services["sink"]["environment"]
    assert sink_env["TRUNKLINE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert "clickhouse" in services["sink"]["depends_on"]
    dsn = urlparse(sink_env["TRUNKLINE_CLICKHOUSE_DSN"])
    assert (dsn.scheme, dsn.hostname, dsn.port) == ("http", "clickhouse", 8123)
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_compose_environment_is_valid_settings():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    env = {k: str(v) for k, v in compose["services"]["worker"]["environment"].items()}
    s = Settings.from_env(env)
    assert not s.is_embedded_clickhouse and s.kafka_bootstrap == "kafka:9092"


def test_dockerfile_copies_every_package():
    text = (ROOT / "Dockerfile").read_text()
    for package in ("edge", "streams", "media", "schemas", "trunkline", "examples"):
        assert f"COPY {package} {package}" in text


def test_grafana_is_provisioned_with_the_datasource_and_every_dashboard():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    grafana = compose["services"]["grafana"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    mounts = dict(v.rsplit(":", 1)[0].split(":") for v in grafana["volumes"])
    assert mounts == {
        "./grafana/provisioning": "/etc/grafana/provisioning",
        "./dashboards": "/var/lib/grafana/dashboards",
    }
    providers = yaml.safe_load(
        (ROOT / "grafana/provisioning/dashboards/trunkline.yaml").read_text()
    )["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]
    (datasource,) = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/clickhouse.yaml").read_text()
    )["datasources"]
    clickhouse = compose["services"]["clickhouse"]["environment"]
    assert datasource["jsonData"]["host"] == "clickhouse"
    assert datasource["jsonData"]["username"] == clickhouse["CLICKHOUSE_USER"]
    assert datasource["secureJsonData"]["password"] == clickhouse["CLICKHOUSE_PASSWORD"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "dashboards" / Path(home).name).is_file()
