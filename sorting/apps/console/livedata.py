"""The Live page's figures: from the line's seams (:class:`LiveFeed`), its Prometheus registry
and, where no line is attached or no registry is wired yet, from the decision log."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, replace
from typing import Any

from prometheus_client import CollectorRegistry

from sorting.apps.console.logview import LogView, SessionCounts
from sorting.serving.live import Alarm, LiveFeed

FRAME_STALE_S = 3.0  # no new frame for this long: the camera light turns red
Samples = dict[str, list[tuple[dict[str, str], float]]]


def read_metrics(registry: CollectorRegistry, namespace: str) -> Samples:
    """Samples of the registry by name without the namespace (``items_total``, ``fps``, ...)."""
    out: Samples = defaultdict(list)
    prefix = namespace + "_"
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name.startswith(prefix):
                out[sample.name[len(prefix):]].append((dict(sample.labels), float(sample.value)))
    return out


def counts_from_metrics(samples: Samples, bins: dict[int, str], reject_bin: int) -> SessionCounts:
    """Per-bin items and rejections by reason from the ``items`` and ``missed_firings`` counters."""
    per_bin = {name: 0 for name in bins.values()}
    rejected: dict[str, int] = {}
    for labels, value in samples.get("items_total", []):
        n = int(value)
        per_bin[labels["bin_name"]] = per_bin.get(labels["bin_name"], 0) + n
        if labels["bin"] == str(reject_bin):
            rejected[labels["reason"]] = rejected.get(labels["reason"], 0) + n
    missed: dict[str, int] = {}
    for labels, value in samples.get("missed_firings_total", []):
        if labels["bin"] != str(reject_bin) and value:
            key = f"missed:{labels['reason']}"
            missed[key] = missed.get(key, 0) + int(value)
    return SessionCounts(total=sum(per_bin.values()), rejected=sum(rejected.values()) + sum(missed.values()),
                         missed=sum(missed.values()), per_bin=per_bin, rejected_by_reason=rejected,
                         missed_by_reason=missed)


def _gauge(samples: Samples, name: str) -> float | None:
    values = samples.get(name)
    return values[0][1] if values else None


def _counts_json(c: SessionCounts, source: str) -> dict[str, Any]:
    reasons = {**c.rejected_by_reason, **c.missed_by_reason}
    return {
        "source": source,
        "total": c.total,
        "rejected": c.rejected,
        "reject_rate": c.rejected / c.total if c.total else None,
        "per_bin": [{"name": k, "n": v} for k, v in c.per_bin.items()],
        "reject_by_reason": [{"reason": k, "n": v, "rate": v / c.total if c.total else 0.0}
                             for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])],
    }


def alarm_json(a: Alarm) -> dict[str, Any]:
    out = asdict(a)
    out.update(title=a.title, state=a.state, first=_clock(a.first_s), last=_clock(a.last_s))
    return out


def _clock(t: float | None) -> str:
    return "" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


def _light(key: str, label: str, state: str, text: str) -> dict[str, str]:
    return {"key": key, "label": label, "state": state, "text": text}


def _health(feed: LiveFeed, samples: Samples | None, log_state: str) -> list[dict[str, str]]:
    """Status lights: camera, PLC, encoder(s), decision log, model (ok / warn / bad / unknown)."""
    alarms = {a.key: a for a in feed.alarms.snapshot() if a.active}
    lights = []
    age = feed.slot.age_s()
    camera_alarm = alarms.get("camera") or alarms.get("camera_view")  # no frame, or frames that show nothing usable
    if camera_alarm is not None:
        lights.append(_light("camera", "Camera", "bad", camera_alarm.message))
    elif age is None:
        lights.append(_light("camera", "Camera", "unknown", "no frame handed to the console yet"))
    elif age > FRAME_STALE_S:
        lights.append(_light("camera", "Camera", "bad", f"no frame for {age:.0f} s"))
    else:
        lights.append(_light("camera", "Camera", "ok", "frames arriving"))
    connected = None if samples is None else _gauge(samples, "actuator_connected")
    if "plc" in alarms:
        lights.append(_light("plc", "PLC", "bad", alarms["plc"].message))
    elif connected is None:
        lights.append(_light("plc", "PLC", "unknown", "no metrics wired"))
    else:
        lights.append(_light("plc", "PLC", "ok" if connected else "bad", "connected" if connected else "unreachable"))
    for labels, value in (samples or {}).get("encoder_connected", []):
        speed = {lb["encoder"]: v for lb, v in (samples or {}).get("belt_speed_m_s", [])}.get(labels["encoder"], 0.0)
        lights.append(_light(f"encoder:{labels['encoder']}", f"Encoder {labels['encoder']}", "ok" if value else "bad",
                             f"belt {speed:.2f} m/s" if value else "link down"))
    log_text = {"ok": "readable", "busy": "busy: showing the last figures", "missing": "not created yet"}[log_state]
    log_light = "bad" if "decision_log" in alarms else ("ok" if log_state == "ok" else "warn")
    lights.append(_light("decision_log", "Decision log",
                         log_light, alarms["decision_log"].message if "decision_log" in alarms else log_text))
    model = feed.status.model
    lights.append(_light("model", "Model", "ok" if model else "unknown", model.model_id if model else "not reported"))
    return lights


def _model_json(feed: LiveFeed) -> dict[str, Any] | None:
    model = feed.status.model
    events = [{"time": _clock(e.wall_s), "ok": e.ok, "model_id": e.model_id, "path": e.path, "message": e.message}
              for e in feed.status.events()]
    if model is None:
        return {"info": None, "events": events, "reloads": feed.status.reloads}
    info = asdict(model)
    info["loaded"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(model.loaded_s))
    info["classes"] = {h: list(v) for h, v in model.classes.items()}
    return {"info": info, "events": events, "reloads": feed.status.reloads}


def live_snapshot(feed: LiveFeed | None, view: LogView) -> dict[str, Any]:
    """Everything the Live page shows, as JSON-able data."""
    session = feed.status.session if feed is not None and feed.status.session else None
    session = session or view.remembered("latest_session", view.latest_session, None)
    samples = read_metrics(feed.registry, feed.namespace) if feed is not None and feed.registry is not None else None
    if feed is not None and samples is not None:
        counts = _counts_json(counts_from_metrics(samples, feed.status.bins, feed.status.reject_bin), "metrics")
    else:
        reject_bin = (feed.status.reject_bin if feed is not None
                      else view.remembered("reject_bin", view.reject_bin, None))
        from_log = view.remembered("counts", lambda: view.session_counts(session, reject_bin),
                                   SessionCounts(0, 0, 0, {}, {}, {}))
        if feed is not None:  # every bin of the line, the empty ones too
            from_log = replace(from_log, per_bin={**{n: 0 for n in feed.status.bins.values()}, **from_log.per_bin})
        counts = _counts_json(from_log, "log")
    recent = view.remembered("recent", view.recent, [])
    out: dict[str, Any] = {
        "attached": feed is not None,
        "now": _clock(time.time()),
        "session": session,
        "counts": counts,
        "recent": recent,
        "log": {"state": view.state},
    }
    if feed is None:
        return out
    stats = feed.recent.stats()
    out.update(
        line=feed.status.line_name,
        frame={"seq": feed.slot.seq, "age_s": feed.slot.age_s()},
        rates={"items_per_min": stats.items_per_min, "window_s": stats.window_s,
               "latency_ms_p50": stats.latency_ms_p50, "latency_ms_p99": stats.latency_ms_p99,
               "fps": None if samples is None else _gauge(samples, "fps")},
        model=_model_json(feed),
        health=_health(feed, samples, view.state),
        alarms=[alarm_json(a) for a in feed.alarms.snapshot()],
    )
    return out
