"""The console's pages and endpoints through Flask's test client: live, history, relabel, crops, tokens."""

from __future__ import annotations

import csv
import io
import sqlite3
import urllib.error
import urllib.request

import pytest
from _console_fixtures import BINS, REJECT, belt_frame, decision_for, make_log

from sorting.apps.console import start_console
from sorting.apps.console.app import create_app
from sorting.apps.console.context import ConsoleContext
from sorting.apps.console.logview import LogView
from sorting.apps.console.security import COOKIE, Access
from sorting.cli import build_parser, main
from sorting.cli.console import start_line_console
from sorting.datasets.manifest import read_manifest
from sorting.errors import ConfigError
from sorting.serving.live import LiveFeed, ModelInfo
from sorting.serving.telemetry import Telemetry, TelemetryConfig
from sorting.taxonomy import load_taxonomy

TOKEN = "correct-horse-battery-staple"
JSON = {"Accept": "application/json"}


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "decisions.sqlite"
    return path, make_log(path, n=40)


def make_client(db_path, feed: LiveFeed | None = None, *, host: str = "127.0.0.1", token: str | None = None):
    ctx = ConsoleContext(view=LogView(db_path, busy_timeout_ms=50), feed=feed, access=Access.for_bind(host, token),
                         taxonomy=load_taxonomy())
    return create_app(ctx).test_client(), ctx


def make_feed(with_metrics: bool = True) -> tuple[LiveFeed, Telemetry]:
    telemetry = Telemetry(TelemetryConfig(), bin_names=BINS, reject_bin=REJECT)
    feed = LiveFeed(line_name="line A", bins=BINS, reject_bin=REJECT,
                    registry=telemetry.registry if with_metrics else None, max_fps=1000)
    return feed, telemetry


def test_live_page_and_snapshot_from_the_metrics(db) -> None:
    feed, telemetry = make_feed()
    for i in range(20):
        telemetry.on_decision(decision_for(i)[1])
        feed.recent.add(5.0 + i)
    telemetry.on_missed(1, "late")
    telemetry.on_frame(0.0)
    telemetry.on_frame(0.05)
    feed.status.model_loaded(ModelInfo(path="m.onnx", model_id="tiny:run-1", name="tiny",
                                       classes={"colour": ("white", "black", "red")}))
    feed.alarms.raise_("camera", "camera reconnecting", severity="critical")
    client, _ = make_client(db[0], feed)
    assert client.get("/").headers["Location"].endswith("/live")
    page = client.get("/live")
    assert page.status_code == 200 and b"line A" in page.data and b"camera reconnecting" in page.data
    snap = client.get("/api/live").get_json()
    counts = snap["counts"]
    assert counts["source"] == "metrics" and counts["total"] == 20
    assert {b["name"]: b["n"] for b in counts["per_bin"]} == {"reject": 8, "white": 4, "black": 4, "red": 4}
    reasons = {r["reason"]: r["n"] for r in counts["reject_by_reason"]}
    assert reasons == {"low_confidence": 2, "ood": 2, "overlap": 2, "cut_off": 2, "missed:late": 1}
    assert counts["rejected"] == 9 and counts["reject_rate"] == pytest.approx(9 / 20)
    assert snap["rates"]["fps"] == pytest.approx(20.0) and snap["rates"]["items_per_min"] == 20
    assert snap["rates"]["latency_ms_p50"] == pytest.approx(14.5)
    assert snap["model"]["info"]["model_id"] == "tiny:run-1"
    lights = {lt["key"]: lt["state"] for lt in snap["health"]}
    assert lights == {"camera": "bad", "plc": "ok", "decision_log": "ok", "model": "ok"}
    assert [a["key"] for a in snap["alarms"]] == ["camera"] and len(snap["recent"]) == 10


def test_plc_and_encoder_lights_follow_the_gauges(db) -> None:
    feed, telemetry = make_feed()
    client, _ = make_client(db[0], feed)
    telemetry.on_actuator_connection(False)
    telemetry.on_encoder("belt", False, 0.0)
    lights = {lt["key"]: lt for lt in client.get("/api/live").get_json()["health"]}
    assert lights["plc"]["state"] == "bad" and lights["plc"]["text"] == "unreachable"
    assert lights["encoder:belt"]["state"] == "bad"
    feed.slot.put(belt_frame(0))
    assert lights["camera"]["state"] == "unknown"
    assert {lt["key"]: lt["state"] for lt in client.get("/api/live").get_json()["health"]}["camera"] == "ok"


def test_counts_come_from_the_log_without_metrics(db) -> None:
    feed, _ = make_feed(with_metrics=False)
    client, _ = make_client(db[0], feed)
    counts = client.get("/api/live").get_json()["counts"]
    assert counts["source"] == "log" and counts["total"] == 40 and counts["rejected"] == 16
    assert [b["name"] for b in counts["per_bin"]] == ["reject", "white", "black", "red"]


def test_frames_long_poll_and_mjpeg_stream(db) -> None:
    feed, _ = make_feed()
    client, _ = make_client(db[0], feed)
    empty = client.get("/frame.jpg?after=0")
    assert empty.status_code == 204
    feed.slot.put(belt_frame(3))
    got = client.get("/frame.jpg?after=0")
    assert got.status_code == 200 and got.mimetype == "image/jpeg" and got.headers["X-Frame-Seq"] == "1"
    assert got.data[:2] == b"\xff\xd8"
    stream = client.get("/stream.mjpg", buffered=False)
    assert stream.mimetype == "multipart/x-mixed-replace"
    chunk = next(iter(stream.response))
    assert chunk.startswith(b"--frame\r\nContent-Type: image/jpeg") and b"\xff\xd8" in chunk
    stream.close()


def test_alarm_acknowledgement_by_json_and_by_form(db) -> None:
    feed, _ = make_feed()
    client, ctx = make_client(db[0], feed)
    feed.alarms.event("missed_firings", "2 firings missed", n=2)
    feed.alarms.raise_("plc", "PLC unreachable")
    feed.alarms.clear("plc")
    r = client.post("/api/alarms/missed_firings/ack", headers={**JSON, "X-CSRF-Token": ctx.access.csrf})
    assert r.status_code == 200 and r.get_json() == {"acknowledged": ["missed_firings"]}
    assert client.post("/api/alarms/nope/ack", headers={**JSON, "X-CSRF-Token": ctx.access.csrf}).status_code == 404
    r = client.post("/api/alarms/ack-all", data={"csrf": ctx.access.csrf})  # a plain form, no script
    assert r.status_code == 303 and feed.alarms.snapshot() == []


def test_no_line_attached(db) -> None:
    client, _ = make_client(db[0])
    page = client.get("/live")
    assert page.status_code == 200 and b"No line attached" in page.data
    snap = client.get("/api/live").get_json()
    assert snap["attached"] is False and snap["counts"]["total"] == 40 and snap["session"] == "s1"
    assert client.get("/frame.jpg").status_code == 404 and client.get("/stream.mjpg").status_code == 404


def test_history_filters_chart_and_csv(db, tmp_path) -> None:
    path, _ = db
    make_log(path, n=5, session="s2")  # the next shift
    client, _ = make_client(path)
    assert client.get("/history").data.count(b"<tr>") == 6  # the latest session by default: header + 5
    page = client.get("/history?session=s1")
    assert page.status_code == 200 and b"<svg" in page.data and page.data.count(b"<tr>") == 41
    assert b"40 items, 16 rejected" in page.data  # the chart's buckets hold every row
    only = client.get("/history?session=s1&reason=ood").data
    assert only.count(b"<td>ood</td>") == 4 and b"rule:white" not in only.split(b"<tbody>")[1]
    every = client.get("/history?session=all")
    assert every.data.count(b"<tr>") == 46
    body = client.get("/history.csv?session=s1&bin=reject")
    assert body.mimetype == "text/csv" and "attachment" in body.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(body.get_data(as_text=True))))
    assert len(rows) == 16 and {r["bin"] for r in rows} == {"reject"} and rows[0]["session"] == "s1"


def test_relabel_answers_land_in_the_log_and_come_out_of_import_log(db, tmp_path, capsys) -> None:
    path, uids = db
    client, ctx = make_client(path)
    page = client.get("/relabel")
    assert page.status_code == 200 and b"16</b> left" in page.data and page.data.count(b'<form class="card') == 16
    save = client.post(f"/api/relabel/{uids[2]}", headers=JSON,
                       data={"fibre": "wool", "colour": "red", "layout": "single", "csrf": ctx.access.csrf})
    assert save.status_code == 200
    assert save.get_json()["progress"] == {"crops": 16, "labelled": 1, "skipped": 0, "left": 15}
    skip = client.post(f"/api/relabel/{uids[5]}", headers=JSON, data={"action": "skip", "csrf": ctx.access.csrf})
    assert skip.get_json()["progress"]["skipped"] == 1
    form = client.post(f"/api/relabel/{uids[7]}", data={"colour": "black", "csrf": ctx.access.csrf})  # no script
    assert form.status_code == 303
    bad = client.post(f"/api/relabel/{uids[9]}", headers=JSON, data={"fibre": "kevlar", "csrf": ctx.access.csrf})
    assert bad.status_code == 400 and "kevlar" in bad.get_json()["error"]
    sorted_item = client.post(f"/api/relabel/{uids[0]}", headers=JSON, data={"fibre": "wool", "csrf": ctx.access.csrf})
    assert sorted_item.status_code == 400  # no crop saved for a sorted item
    assert b"13</b> left" in client.get("/relabel").data
    assert client.get("/relabel?done=1").data.count(b'<form class="card') == 16
    out = tmp_path / "new.csv"
    assert main(["data", "import-log", str(path), "-o", str(out)]) == 0
    assert "2 labelled crops" in capsys.readouterr().out
    assert {(r.fibre, r.colour) for r in read_manifest(out).rows} == {("wool", "red"), (None, "black")}


def test_crops_are_served_by_item_id_only(db) -> None:
    path, uids = db
    client, _ = make_client(path)
    crop = client.get(f"/crop/{uids[2]}")
    assert crop.status_code == 200 and crop.mimetype == "image/jpeg" and crop.data[:2] == b"\xff\xd8"
    crop_file = path.parent / "decisions-crops" / f"{uids[2]}.jpg"
    for url in (f"/crop/{crop_file}", "/crop/../decisions.sqlite", "/crop/..%2Fdecisions.sqlite",
                f"/crop/decisions-crops%2F{uids[2]}.jpg", "/crop/%2Fetc%2Fpasswd", "/crop/..", f"/crop/{uids[0]}",
                "/crop/unknown-item"):
        assert client.get(url).status_code == 404, url


def test_token_required_beyond_loopback(db) -> None:
    with pytest.raises(ConfigError, match="access token"):
        Access.for_bind("0.0.0.0", None)
    with pytest.raises(ConfigError, match="too short"):
        Access.for_bind("0.0.0.0", "short")
    with pytest.raises(ConfigError, match="access token"):
        start_console(None, db[0], host="192.0.2.10", port=0)
    assert Access.for_bind("localhost", None).loopback and Access.for_bind("::1", None).loopback


def test_every_request_needs_the_token(db) -> None:
    path, uids = db
    feed, _ = make_feed()
    feed.slot.put(belt_frame(0))
    client, ctx = make_client(path, feed, host="0.0.0.0", token=TOKEN)
    urls = ["/live", "/api/live", "/frame.jpg", "/stream.mjpg", "/history", "/history.csv", "/relabel",
            f"/crop/{uids[2]}"]
    for url in urls:
        r = client.get(url)
        assert r.status_code == 401, url
    assert b"Access token" in client.get("/live", headers={"Accept": "text/html"}).data  # a login form
    assert client.get("/api/live", headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    assert client.get("/api/live", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/api/live", headers={"X-Console-Token": TOKEN}).status_code == 200
    assert client.post(f"/api/relabel/{uids[2]}", data={"fibre": "wool", "csrf": ctx.access.csrf}).status_code == 401
    assert client.get("/healthz").status_code == 200


def test_login_cookie_then_writes_need_the_csrf_value(db) -> None:
    path, uids = db
    client, ctx = make_client(path, host="0.0.0.0", token=TOKEN)
    assert client.get("/login?token=nope").status_code == 401
    login = client.get(f"/login?token={TOKEN}&next=/history")
    assert login.status_code == 303 and login.headers["Location"].endswith("/history")
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None and TOKEN not in cookie.value and cookie.http_only and cookie.same_site == "Strict"
    assert client.get("/history").status_code == 200 and client.get(f"/crop/{uids[2]}").status_code == 200
    assert client.get("/login?token=" + TOKEN + "&next=//evil.example").headers["Location"].endswith("/live")
    assert not cookie.secure
    client.get(f"/login?token={TOKEN}", headers={"X-Forwarded-Proto": "https"})  # behind a TLS proxy
    assert client.get_cookie(COOKIE).secure
    # the cookie alone does not allow writes (another site could make the browser send it)
    assert client.post(f"/api/relabel/{uids[2]}", headers=JSON, data={"fibre": "wool"}).status_code == 403
    ok = client.post(f"/api/relabel/{uids[2]}", headers={**JSON, "X-CSRF-Token": ctx.access.csrf},
                     data={"fibre": "wool"})
    assert ok.status_code == 200
    header_only = make_client(path, host="0.0.0.0", token=TOKEN)[0]  # an API client: token in a header
    assert header_only.post(f"/api/relabel/{uids[5]}", headers={**JSON, "Authorization": f"Bearer {TOKEN}"},
                            data={"skip": "1", "action": "skip"}).status_code == 200


def test_loopback_console_refuses_foreign_host_names(db) -> None:
    client, _ = make_client(db[0])
    assert client.get("/live", headers={"Host": "attacker.example:8088"}).status_code == 400
    assert client.get("/live", headers={"Host": "localhost:8088"}).status_code == 200
    assert client.get("/live", headers={"Host": "[::1]:8088"}).status_code == 200
    r = client.get("/live")
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"] and r.headers["X-Frame-Options"] == "DENY"


def test_busy_and_missing_logs_are_reported(db, tmp_path) -> None:
    path, _ = db
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")  # a rollback-journal log can lock readers out
    client, _ = make_client(path)
    assert client.get("/api/live").get_json()["log"]["state"] == "ok"
    conn.execute("BEGIN EXCLUSIVE")
    try:
        snap = client.get("/api/live").get_json()
        assert snap["log"]["state"] == "busy" and snap["counts"]["total"] == 40  # the last figures read
        busy = client.get("/history")
        assert busy.status_code == 503 and b"Decision log busy" in busy.data and busy.headers["Retry-After"]
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert client.get("/history").status_code == 200
    feed, _ = make_feed()
    fresh, _ = make_client(tmp_path / "not-yet.sqlite", feed)  # serve --console before the first row
    snap = fresh.get("/api/live").get_json()
    assert snap["log"]["state"] == "missing" and snap["counts"]["total"] == 0
    assert fresh.get("/history").status_code == 404 and b"does not exist yet" in fresh.get("/relabel").data


def test_real_server_thread_serves_and_closes(db) -> None:
    handle = start_console(None, db[0], port=0)
    try:
        with urllib.request.urlopen(handle.url + "live", timeout=5) as resp:
            assert resp.status == 200 and b"No line attached" in resp.read()
    finally:
        handle.close()
        handle.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(handle.url + "healthz", timeout=2)


def test_cli_console_and_serve_flags(db, tmp_path, capsys, monkeypatch, repo_root) -> None:
    assert main(["console", str(tmp_path / "missing.sqlite")]) == 1
    assert "does not exist" in capsys.readouterr().err
    line = str(repo_root / "serving" / "line-colour-6bin.yaml")
    args = build_parser().parse_args(["serve", "--line", line, "--console", "--console-host", "0.0.0.0"])
    from sorting.serving.line_config import load_line_config

    cfg = load_line_config(line, [f"log.path={db[0]}"])
    monkeypatch.delenv("TEXTILE_SORTER_CONSOLE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="access token"):
        start_line_console(args, cfg)
    monkeypatch.setenv("TEXTILE_SORTER_CONSOLE_TOKEN", TOKEN)
    args.console_port = 0
    handle, feed = start_line_console(args, cfg)
    try:
        assert feed.status.line_name == cfg.name and "operator's console on http://0.0.0.0:" in capsys.readouterr().out
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"http://127.0.0.1:{handle.port}/live", timeout=5)
    finally:
        handle.close()
    assert start_line_console(build_parser().parse_args(["serve", "--line", line]), cfg) is None


def test_a_taken_port_is_one_config_error_not_an_exit(db) -> None:
    """werkzeug ends the process (sys.exit) when it cannot bind; the console, started inside ``serve --console``,
    must raise a ConfigError the line can report and clean up after instead."""
    import socket

    from sorting.errors import ConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ConfigError, match=f"console: cannot listen on 127.0.0.1:{busy.getsockname()[1]}"):
            start_console(None, db[0], port=busy.getsockname()[1])
