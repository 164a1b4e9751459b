"""serving/grafana-dashboard.json: valid JSON whose queries name metrics and labels the sorter exports."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from sorting.serving.policy import Decision
from sorting.serving.telemetry import Telemetry, TelemetryConfig

METRIC = re.compile(r"\b(textile_sorter_[a-z0-9_]+)")
BY = re.compile(r"\bby \(([^)]*)\)")
SELECTOR_LABEL = re.compile(r"([a-z_]+)\s*(?:=~|!=|!~|=)")


def exported() -> dict[str, set[str]]:
    """Every sample name the line exports (each metric touched once) -> its label names."""
    t = Telemetry(TelemetryConfig(), bin_names={0: "reject", 1: "white"}, reject_bin=0)
    t.on_decision(Decision(1, "white", "rule:white"))
    t.on_missed(1, "late")
    t.on_frame(0.0)
    t.on_frame(0.1)
    t.observe_stage("segment", 0.01)
    t.observe_decision_latency(0.02)
    t.on_dropped_frames()
    t.on_camera_reconnect()
    t.on_encoder("belt", True, 0.5)
    t.ignored_detections.labels(kind="hand").inc()
    t.model_loaded(SimpleNamespace(model_id="tiny:run-1", labels={}))
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(t.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def test_dashboard_queries_use_exported_metrics_and_labels(repo_root) -> None:
    dashboard = json.loads((repo_root / "serving" / "grafana-dashboard.json").read_text())
    metrics = exported()
    scrape_labels = {"job", "instance", "le", "__name__"}
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 8
    assert {i["name"] for i in dashboard["__inputs"]} == {"DS_PROMETHEUS"}
    queries = [t["expr"] for p in panels for t in p["targets"]]
    queries += [v["definition"] for v in dashboard["templating"]["list"]]
    used = set()
    for expr in queries:
        names = METRIC.findall(expr)
        assert names, expr
        for name in names:
            assert name in metrics, f"{name} is not exported ({expr})"
            used.add(name)
            labels = metrics[name] | scrape_labels
            for group in BY.findall(expr):
                assert {g.strip() for g in group.split(",")} <= labels, expr
            for selector in re.findall(name + r"\{([^}]*)\}", expr):
                assert set(SELECTOR_LABEL.findall(selector)) <= labels, expr
    # every family the line exports has a panel
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in metrics}
    assert families <= {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
