"""docker/prometheus/ and docker/grafana/ speak of the contract's series only, and the
dashboard and the provisioning agree on their data source. Pure: no Prometheus, no Grafana
(promtool checks and unit-tests the rules: make rules)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "docker" / "prometheus"
GRAFANA = ROOT / "docker" / "grafana"
# docs/reference.md, "Metrics"; a histogram's series carry _bucket, _count and _sum.
CONTRACT_SERIES = {
    "kc_webhook_events_total",
    "kc_purchases_total",
    "kc_revocations_total",
    "kc_dead_letters_total",
    "kc_task_retries_total",
    "kc_payment_to_access_seconds",
    "kc_reconcile_found_total",
    "kc_index_usable",
    "kc_inbox_stuck_events",
    "kc_refund_failures_total",
    "kc_database_up",
    "kc_periodic_last_success_timestamp_seconds",
}
# kc_tasks' own series beyond the contract's table, which alerts of the contract need: each is
# documented in docs/metrics.md, beside the contract's.
OWN_SERIES = {
    "kc_worker_consuming",
    "kc_queue_heartbeat_timestamp_seconds",
    "kc_periodic_interval_seconds",
}
KC_NAME = re.compile(r"\bkc_[a-z_]+\b")
ALERTS = {
    "KcIndexUnusable",
    "KcDeadLettersWaiting",
    "KcInboxStuck",
    "KcRejectedSignatureBurst",
    "KcWebhooksMissing",
    "KcSlowPaymentToAccess",
    "KcRefundFailed",
    "KcNoConsumer",
    "KcPurchasesWaiting",
    "KcDatabaseDown",
    "KcPeriodicTaskFailing",
}


def series_in(text: str) -> set[str]:
    names = {re.sub(r"_(bucket|count|sum)$", "", name) for name in KC_NAME.findall(text)}
    return {name for name in names if not name.startswith("kc_tasks")}


def test_the_rules_use_only_the_contracts_and_the_documented_series_and_name_every_alert_of_the_issue() -> None:
    rules = yaml.safe_load((PROMETHEUS / "kc_tasks.rules.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}

    assert ALERTS <= set(alerts)
    for name, rule in alerts.items():
        assert series_in(rule["expr"]) <= CONTRACT_SERIES | OWN_SERIES, name
        assert rule["annotations"]["runbook"].startswith(f"docs/metrics.md#{name.lower()}"), name
    tested = (PROMETHEUS / "kc_tasks.test.yml").read_text()
    assert all(f"alertname: {name}" in tested for name in alerts), "each alert has a promtool unit test"


def test_each_alert_has_a_section_in_the_docs_and_each_series_a_row() -> None:
    docs = (ROOT / "docs" / "metrics.md").read_text()
    for name in ALERTS | {"KcMetricsDown"}:
        assert f"### {name}\n" in docs, name
    for series in CONTRACT_SERIES | OWN_SERIES:
        assert f"| `{series}` |" in docs, series


def test_prometheus_scrapes_the_web_the_worker_flower_and_rabbitmq() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}

    assert {"kc-web", "kc-worker", "flower", "rabbitmq"} <= jobs
    assert config["rule_files"] == ["kc_tasks.rules.yml"]


def test_the_dashboard_graphs_the_contracts_series_from_the_provisioned_prometheus() -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "kc_tasks.json").read_text())
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]

    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {uid}
    graphed = set().union(*(series_in(expr) for expr in exprs))
    assert CONTRACT_SERIES <= graphed <= CONTRACT_SERIES | OWN_SERIES, graphed ^ CONTRACT_SERIES
