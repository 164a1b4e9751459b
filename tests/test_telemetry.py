"""Telemetry: private registries, metric values, /metrics scraped over loopback."""

from __future__ import annotations

import socket
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sorting.errors import ConfigError
from sorting.serving.policy import Decision
from sorting.serving.telemetry import Telemetry, TelemetryConfig

BINS = {0: "reject", 1: "white", 2: "dark"}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def feed(tel: Telemetry) -> None:
    tel.on_decision(Decision(1, "white", "rule:white"))
    tel.on_decision(Decision(1, "white", "rule:white"))
    tel.on_decision(Decision(2, "dark", "rule:dark"))
    tel.on_decision(Decision(0, "reject", "low_confidence:colour"))
    tel.on_missed(2, "late")
    for i in range(11):
        tel.on_frame(i / 50.0)  # 50 fps
    tel.observe_stage("infer", 0.004)
    tel.observe_stage("segment", 0.002)
    tel.observe_decision_latency(0.03)
    tel.on_dropped_frames(3)
    tel.on_camera_reconnect()
    tel.on_actuator_connection(False)
    tel.model_loaded(SimpleNamespace(model_id="run42", labels={}))
    tel.model_loaded(SimpleNamespace(model_id="run43", labels={}))


def test_metric_values() -> None:
    tel = Telemetry(TelemetryConfig(), bin_names=BINS, reject_bin=0)
    feed(tel)
    s = samples(tel.render().decode())
    ns = "textile_sorter_"
    assert s[(ns + "items_total", (("bin", "1"), ("bin_name", "white"), ("reason", "rule")))] == 2
    assert s[(ns + "items_total", (("bin", "0"), ("bin_name", "reject"), ("reason", "low_confidence")))] == 1
    assert s[(ns + "reject_rate", ())] == pytest.approx(2 / 4)  # reject + one missed firing
    assert s[(ns + "fps", ())] == pytest.approx(50.0)
    assert s[(ns + "frames_total", ())] == 11
    assert s[(ns + "stage_latency_seconds_count", (("stage", "infer"),))] == 1
    assert s[(ns + "decision_latency_seconds_bucket", (("le", "0.035"),))] == 1
    assert s[(ns + "dropped_frames_total", ())] == 3
    assert s[(ns + "camera_reconnects_total", ())] == 1
    assert s[(ns + "missed_firings_total", (("bin", "2"), ("reason", "late")))] == 1
    assert s[(ns + "actuator_connected", ())] == 0
    assert (ns + "model_info", (("model_id", "run43"),)) in s
    assert (ns + "model_info", (("model_id", "run42"),)) not in s


def test_registries_are_independent() -> None:
    a = Telemetry(TelemetryConfig(), bin_names=BINS, reject_bin=0)
    b = Telemetry(TelemetryConfig(namespace="line2"), bin_names=BINS, reject_bin=0)
    a.on_dropped_frames(5)
    assert samples(b.render().decode())[("line2_dropped_frames_total", ())] == 0


def test_metrics_endpoint_on_loopback() -> None:
    tel = Telemetry(TelemetryConfig(), bin_names=BINS, reject_bin=0)
    assert tel.start() is None  # port 0 = disabled
    port = tel.start(free_port())
    try:
        feed(tel)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert samples(body)[("textile_sorter_frames_total", ())] == 11
        with pytest.raises(ConfigError, match="cannot listen"):
            Telemetry(TelemetryConfig(), bin_names=BINS, reject_bin=0).start(port)  # port in use
    finally:
        tel.close()
        tel.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)
