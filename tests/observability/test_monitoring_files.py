"""contrib/monitoring: the Grafana dashboard and the Prometheus alert rules load, have the shape
their tools read, and refer only to metrics ledgerflow exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ledgerflow.metrics import Metrics, metric_names

MONITORING = Path(__file__).resolve().parents[2] / "contrib" / "monitoring"

# a metric name in PromQL: ours all start with ledgerflow_
METRIC = re.compile(r"\bledgerflow_[a-z_]+\b")
# the names a label matcher or grouping may use: what our metrics carry
LABELS = {"transport", "state", "status", "outcome", "reason", "action", "tenant", "le"}


def referenced(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = []
    for panel in dashboard["panels"]:
        assert {"id", "type", "title", "gridPos", "targets"} <= set(panel), panel.get("title")
        for target in panel["targets"]:
            exprs.append(target["expr"])
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    rules: list[dict[str, Any]] = [r for group in loaded["groups"] for r in group["rules"]]
    return rules


def test_the_dashboard_refers_only_to_exported_metrics() -> None:
    known = metric_names(Metrics(tenant_label=True))
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    used = set().union(*(referenced(e) for e in exprs))
    assert used, "no metric referenced"
    assert used <= known, f"unknown metrics: {sorted(used - known)}"


def test_the_alerts_cover_lag_dead_letters_and_live_workers_with_exported_metrics() -> None:
    known = metric_names(Metrics())
    rules = alert_rules()
    by_name = {r["alert"]: r for r in rules}
    for name in ("LedgerflowQueueLagging", "LedgerflowDeadLetters", "LedgerflowNoLiveWorkers"):
        assert name in by_name
    for rule in rules:
        assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule), rule
        assert rule["annotations"]["summary"]
        used = referenced(rule["expr"])
        assert used, f"{rule['alert']} refers to no ledgerflow metric"
        assert used <= known, f"{rule['alert']}: unknown metrics {sorted(used - known)}"
        for label in re.findall(r"\{([a-z_]+)=", rule["expr"]):
            assert label in LABELS
    assert "ledgerflow_queue_oldest_age_seconds" in by_name["LedgerflowQueueLagging"]["expr"]
    assert "ledgerflow_dead_letters" in by_name["LedgerflowDeadLetters"]["expr"]
    assert 'ledgerflow_workers{state="alive"}' in by_name["LedgerflowNoLiveWorkers"]["expr"]


@pytest.mark.parametrize(
    "expr",
    ["rate(ledgerflow_events_processed[5m])", "ledgerflow_queue_lag", "max(ledgerflow_step)"],
)
def test_a_misspelt_metric_would_be_caught(expr: str) -> None:
    assert not referenced(expr) <= metric_names(Metrics())
