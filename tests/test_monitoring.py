"""The alert rules (promtool's unit tests), the dashboard and the runbook name exported metrics."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.metric_names import CONTRACT as CONTRACT_NAMES
from tests.metric_names import finished_run, status_read
from tests.processes import program
from worker.metrics import Reading, RetentionCollector

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "numbers-retention.json"
RUNBOOK = ROOT / "docs" / "runbook.md"
METRIC = re.compile(r"\bnumbers_retention_[a-z_]+\b")
# The names DESIGN.md and issue 12 promise (the counter's sample carries _total).
CONTRACT = {
    f"numbers_retention_{name}{'_total' if name == 'purged' else ''}" for name in CONTRACT_NAMES
}


def promtool() -> str:
    """Debian's promtool (`.ci/run` installs the prometheus package); skipped only off CI."""
    return program("promtool", "prometheus")


SCHEDULE = {"purge": 900, "publish": 3600, "relay": 2}
REDIS = {
    "relay_last_success_at": "2026-11-27T12:00:00Z",
    "maxmemory_policy": "noeviction",
    "stream": {
        "entries": 10,
        "maxlen": 100_000,
        "groups": [{"name": "billing", "pending": 1, "lag": 2}],
        "dropped_unread": 0,
    },
}


def exported() -> set[str]:
    """Every sample name the exporter gives when the store, runs and publication all exist."""
    status = status_read(
        overdue=1,
        oldest_overdue_seconds=5.0,
        held=1,
        releasable=1,
        upstream_failed=1,
        upstream_permanent=1,
        purge_last_success_at="2026-11-27T12:00:00Z",
        last_finished_run=finished_run("completed", 1.0, 1, 1.0),
        purged_total=1,
    )
    publication = {"last_success_at": "2026-11-27T12:00:00Z", "failing": False}
    registry = CollectorRegistry()
    registry.register(
        RetentionCollector(
            lambda: Reading(status, publication, SCHEDULE, REDIS, {"store": True}), cache_seconds=0
        )
    )
    text = generate_latest(registry).decode()
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def yaml_file(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml_file(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]
    ]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_exporter_exports_the_contract() -> None:
    assert exported() >= CONTRACT


def promtool_passes(*args: str, timeout: float) -> str:
    """`promtool <args>` in deploy/prometheus, which must exit 0; its standard output."""
    done = subprocess.run(
        [promtool(), *args],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.processes(moved_clock=False)
def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    assert "SUCCESS" in promtool_passes("test", "rules", "alerts.test.yml", timeout=120)


@pytest.mark.processes(moved_clock=False)
def test_prometheus_config_and_rules_check() -> None:
    checked = promtool_passes("check", "config", "prometheus.yml", timeout=60)
    assert "SUCCESS: 18 rules found" in checked


def test_every_alert_rule_fires_in_a_unit_test() -> None:
    """Each rule (alert name and cause) is shown firing at least once, not only staying quiet."""
    rules = {(rule["alert"], rule["labels"].get("cause")) for rule in alert_rules()}
    fired = {
        (case["alertname"], alert["exp_labels"].get("cause"))
        for test in yaml_file(PROMETHEUS / "alerts.test.yml")["tests"]
        for case in test["alert_rule_test"]
        for alert in case["exp_alerts"]
    }
    assert fired == rules


def test_alerts_dashboard_and_runbook_name_only_exported_metrics() -> None:
    names = exported()
    in_alerts = {name for rule in alert_rules() for name in METRIC.findall(rule["expr"])}
    in_dashboard = {name for expr in dashboard_exprs() for name in METRIC.findall(expr)}
    in_runbook = set(METRIC.findall(RUNBOOK.read_text()))
    assert in_alerts <= names
    assert in_dashboard <= names
    assert in_runbook <= names
    # The dashboard shows, and the runbook documents, everything exported.
    assert in_dashboard == names
    assert in_runbook == names


def test_dashboard_panels_use_the_provisioned_data_source() -> None:
    [source] = yaml_file(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "numbers-retention"
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(titles) == len(set(titles))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_a_panel_in_seconds_plots_only_times() -> None:
    """A 0/1 flag (publish_failing, paused, up) on a seconds axis reads as "1 s": each panel
    with unit `s` plots only times (a `_seconds` metric, or the age of a timestamp)."""
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["fieldConfig"]["defaults"].get("unit") != "s":
            continue
        for target in panel["targets"]:
            names = METRIC.findall(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert all(name.endswith("_seconds") for name in names), (panel["title"], names)


def test_the_runbook_names_prometheus_pages_of_both_uis_and_redis_eviction() -> None:
    """Debian's Prometheus (2.42, no new UI) serves its pages under /classic/; the compose
    image serves /alerts and /graph. And Redis must not evict keys that carry no TTL."""
    runbook = RUNBOOK.read_text()
    for page in ("alerts", "graph"):
        assert f"/{page}`" in runbook
        assert f"/classic/{page}" in runbook
    assert "maxmemory-policy noeviction" in runbook
    assert "allkeys-" in runbook


def test_every_alert_rule_stays_quiet_on_a_healthy_system_at_the_defaults() -> None:
    """The six-hour healthy-system unit test checks every rule, at every half hour it looks
    (two rules added later were not checked there: a rule that cried wolf would go unseen),
    with every series the rules read."""
    [healthy] = [
        test
        for test in yaml_file(PROMETHEUS / "alerts.test.yml")["tests"]
        if test["name"].startswith("a healthy system at the default settings")
    ]
    checks = healthy["alert_rule_test"]
    assert all(case["exp_alerts"] == [] for case in checks)
    times = {case["eval_time"] for case in checks}
    assert len(times) == 12  # every 30 minutes over six hours
    quiet = {(case["eval_time"], case["alertname"]) for case in checks}
    assert quiet == {(time, rule["alert"]) for time in times for rule in alert_rules()}
    # ... on the series a healthy system has for each: a rule whose metric is missing there
    # stays quiet for want of data, not because the system is healthy.
    series = [case["series"] for case in healthy["input_series"]]
    given = {name for line in series for name in METRIC.findall(line)}
    assert {name for rule in alert_rules() for name in METRIC.findall(rule["expr"])} <= given
    # Every source of the exporter answering in time (store, runs, and Redis where configured).
    sources = {
        match.group(1)
        for line in series
        if (match := re.search(r'numbers_retention_scrape_source_up\{.*source="([a-z]+)"', line))
    }
    assert sources == {"store", "runs", "redis"}
