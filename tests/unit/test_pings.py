"""Heartbeat pings without a network: URL kinds, the request of each event per kind, the
texts, the run's log tail, the label and the setting (never quoting the token)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from sidecar.actions.backup import BackupOutcome
from sidecar.tarball.archive import ArchiveResult
from sidecar.core.errors import LabelError, SettingsError
from sidecar.core.labels import parse_target
from sidecar.core.model import ContainerInfo, ContainerState, Mount
from sidecar.pings.sender import Pinger, event_of, summary
from sidecar.pings.tail import RunLogTail
from sidecar.core.ping_urls import MAX_BODY_BYTES, PingEvent, PingKind, PingUrl, cut_body, parse_ping_url, request_for
from sidecar.core.schedule import parse_schedule
from sidecar.core.settings import load_settings

TOKEN = "5f1c0d7e-9a2b-4c3d-8e4f-a1b2c3d4e5f6"
RID = "11111111-2222-3333-4444-555555555555"


@pytest.mark.parametrize("raw, kind, url", [
    (f"https://hc-ping.com/{TOKEN}", PingKind.HEALTHCHECKS, f"https://hc-ping.com/{TOKEN}"),
    (f"hc+https://hc.example.org/ping/{TOKEN}", PingKind.HEALTHCHECKS, f"https://hc.example.org/ping/{TOKEN}"),
    (f"HC+http://127.0.0.1:8000/ping/{TOKEN}", PingKind.HEALTHCHECKS, f"http://127.0.0.1:8000/ping/{TOKEN}"),
    ("https://kuma.example/api/push/Tok3n?status=up&msg=OK&ping=", PingKind.KUMA,
     "https://kuma.example/api/push/Tok3n?status=up&msg=OK&ping="),
    ("kuma+https://status.example/push/Tok3n", PingKind.KUMA, "https://status.example/push/Tok3n"),
    ("https://example.org/hook/Tok3n", PingKind.PLAIN, "https://example.org/hook/Tok3n"),
    (f"plain+https://hc-ping.com/{TOKEN}", PingKind.PLAIN, f"https://hc-ping.com/{TOKEN}"),
    ("  http://example.org/x \n", PingKind.PLAIN, "http://example.org/x"),
])
def test_kinds(raw, kind, url):
    ping = parse_ping_url(raw)
    assert (ping.kind, ping.url) == (kind, url)
    assert TOKEN not in ping.shown and "Tok3n" not in ping.shown and TOKEN not in repr(ping)


@pytest.mark.parametrize("raw", [f"ftp://hc-ping.com/{TOKEN}", f"hc-ping.com/{TOKEN}", f"cronitor+https://x/{TOKEN}",
                                 f"hc+ftp://x/{TOKEN}", f"https:///{TOKEN}", f"https://x:port/{TOKEN}",
                                 f"https://x/a {TOKEN}", ""])
def test_bad_urls_say_what_is_accepted_without_quoting(raw):
    with pytest.raises(ValueError) as err:
        parse_ping_url(raw)
    assert "accepted" in str(err.value) and TOKEN not in str(err.value)


def test_shown_names_kind_scheme_and_host_only():
    assert parse_ping_url(f"hc+http://user:pw@127.0.0.1:8000/ping/{TOKEN}?x=1").shown == "hc:http://127.0.0.1:8000"


HC = PingUrl(PingKind.HEALTHCHECKS, f"https://hc-ping.com/{TOKEN}")


@pytest.mark.parametrize("event, method, path", [
    (PingEvent.START, "GET", f"/{TOKEN}/start"), (PingEvent.SUCCESS, "POST", f"/{TOKEN}"),
    (PingEvent.FAILURE, "POST", f"/{TOKEN}/fail"), (PingEvent.OFFSITE, "POST", f"/{TOKEN}/75"),
    (PingEvent.SKIPPED, "POST", f"/{TOKEN}/log"), (PingEvent.ABORTED, "POST", f"/{TOKEN}/log"),
])
def test_healthchecks_requests(event, method, path):
    text = "" if event is PingEvent.START else "what happened"
    request = request_for(HC, event, RID, text)
    parts = urlsplit(request.url)
    assert (request.method, parts.path, parse_qs(parts.query)) == (method, path, {"rid": [RID]})
    assert request.body == (text.encode() if text else None)


def test_healthchecks_keeps_its_own_query_and_a_trailing_slash_is_one():
    ping = parse_ping_url(f"hc+https://hc.example/ping/KEY/{TOKEN}/?create=1")
    request = request_for(ping, PingEvent.FAILURE, RID, "boom")
    assert request.url == f"https://hc.example/ping/KEY/{TOKEN}/fail?create=1&rid={RID}"


def test_kuma_says_up_or_down_with_the_first_line_and_the_duration():
    ping = parse_ping_url("https://kuma.example/api/push/Tok3n?status=up&msg=OK&ping=&keep=1")
    up = request_for(ping, PingEvent.SUCCESS, RID, "backup of app succeeded: 1 archives", 2.5)
    assert up.method == "GET" and up.body is None
    assert parse_qs(urlsplit(up.url).query, keep_blank_values=True) == {
        "status": ["up"], "msg": ["backup of app succeeded: 1 archives"], "ping": ["2500"], "keep": ["1"]}
    down = request_for(ping, PingEvent.FAILURE, RID, "backup of app failed\n\nthe run's last lines:\n" + "x" * 999)
    assert parse_qs(urlsplit(down.url).query)["msg"] == ["backup of app failed"]
    assert parse_qs(urlsplit(down.url).query)["status"] == ["down"]
    long = request_for(ping, PingEvent.OFFSITE, RID, "y" * 2000)
    assert len(parse_qs(urlsplit(long.url).query)["msg"][0]) == 250
    for event in (PingEvent.START, PingEvent.SKIPPED, PingEvent.ABORTED):
        assert request_for(ping, event, RID, "x") is None


def test_plain_gets_at_start_and_success_and_posts_a_failure():
    ping = parse_ping_url("https://example.org/hook/Tok3n?a=b")
    assert request_for(ping, PingEvent.START, RID) == request_for(ping, PingEvent.SUCCESS, RID, "ok")
    assert request_for(ping, PingEvent.START, RID).method == "GET"
    assert request_for(ping, PingEvent.START, RID).url == ping.url  # untouched: no rid, no suffix
    failed = request_for(ping, PingEvent.FAILURE, RID, "boom\nline")
    assert (failed.method, failed.url, failed.body) == ("POST", ping.url, b"boom\nline")
    assert request_for(ping, PingEvent.SKIPPED, RID, "x") is None


def test_a_long_body_keeps_its_end():
    text = "".join(f"line {n}\n" for n in range(5000))
    body = cut_body(text)
    assert len(body) == MAX_BODY_BYTES and body.startswith(b"[... cut ...]") and body.endswith(b"line 4999\n")
    assert cut_body("short") == b"short"


def outcome(result: str, **kw) -> BackupOutcome:
    return BackupOutcome("app", "app-1", result, **{"seconds": 3.25, **kw})


def test_events_and_texts():
    archives = (ArchiveResult(Path("/b/a.tar.zst"), 100, 400, "0" * 64),)
    ok = outcome("success", archives=archives)
    assert event_of(ok) is PingEvent.SUCCESS
    assert summary(ok, PingEvent.SUCCESS, ["ignored"]) == "backup of app succeeded: 1 archives, 100 bytes, 3.2 s"
    offsite = outcome("success", offsite_error="store down")
    assert event_of(offsite) is PingEvent.OFFSITE and "off-site copy failed: store down" in summary(
        offsite, PingEvent.OFFSITE, [])
    failed = outcome("failure", phase="pre", error="backup.exec.pre exited with 1")
    assert event_of(failed) is PingEvent.FAILURE
    assert summary(failed, PingEvent.FAILURE, ["l1", "l2"]) == (
        "backup of app failed in phase pre: backup.exec.pre exited with 1\n\nthe run's last 2 log lines:\nl1\nl2")
    assert event_of(outcome("skipped")) is PingEvent.SKIPPED and event_of(outcome("aborted")) is PingEvent.ABORTED


def test_the_tail_keeps_each_targets_run_bounded_and_masks_registered_secrets():
    from sidecar.notify.redact import register_secrets
    register_secrets(f"hc+https://hc-ping.com/{TOKEN}")
    tail = RunLogTail(lines=3, width=120)
    log = logging.getLogger("test.pings.tail")
    log.addHandler(tail)
    log.setLevel(logging.INFO)
    try:
        log.info("before the run", extra={"target": "app"})
        tail.begin("app")
        for n in range(5):
            log.info(f"step {n}", extra={"target": "app"})
        log.info("other target's line", extra={"target": "db"})
        log.info("no target, this thread")  # the engine's records carry none
        other = threading.Thread(target=lambda: log.info("no target, another thread"))
        other.start()
        other.join()
        log.error(f"token {TOKEN} and a long text " + "z" * 200, extra={"target": "app"})
        lines = tail.take("app")
    finally:
        log.removeHandler(tail)
    assert len(lines) == 3
    assert lines[0].endswith("step 4 target=app") and "no target, this thread" in lines[1]
    assert "another thread" not in "".join(lines) and "before the run" not in "".join(lines)
    assert TOKEN not in lines[2] and "****" in lines[2] and lines[2].endswith(" [...]")
    assert tail.take("app") == []


def test_the_pinger_sends_start_and_end_in_the_background_with_one_run_id():
    sent: list = []
    release = threading.Event()

    def send(request, timeout):
        release.wait(5)
        sent.append(request)
        return 200

    pinger = Pinger(HC, 1.0, send=send)
    label = parse_ping_url("https://example.org/hook/Tok3n")
    try:
        pinger.start("app", label)  # returns at once although the sender is blocked
        pinger.finish("app", label, outcome("failure", phase="read", error="boom"))
        assert sent == []
        release.set()
    finally:
        pinger.close(5)
    assert [(r.method, urlsplit(r.url).path) for r in sent] == [
        ("GET", f"/{TOKEN}/start"), ("GET", "/hook/Tok3n"), ("POST", f"/{TOKEN}/fail"), ("POST", "/hook/Tok3n")]
    assert len({parse_qs(urlsplit(r.url).query)["rid"][0] for r in sent if "rid" in r.url}) == 1
    assert sent[2].body.startswith(b"backup of app failed in phase read: boom")


def test_a_target_without_any_ping_url_costs_nothing():
    pinger = Pinger(None, 1.0, send=lambda r, t: pytest.fail("nothing to send"))
    pinger.start("app", None)
    pinger.finish("app", None, outcome("success"))
    pinger.close()
    assert pinger.kinds(None) == () and pinger.kinds(HC) == ("hc",)


def container(labels: dict[str, str]) -> ContainerInfo:
    return ContainerInfo(id="c" * 64, name="app-1", image="app", image_id="sha256:1", labels=labels,
                         state=ContainerState.RUNNING,
                         mounts=(Mount("volume", "data", "/data", read_only=False),))


def test_the_label_is_parsed_and_a_bad_one_is_reported_without_its_value():
    daily = parse_schedule("@daily")
    target = parse_target(container({"backup.enable": "true", "backup.ping": f"https://hc-ping.com/{TOKEN}"}), daily)
    assert target.config.ping == PingUrl(PingKind.HEALTHCHECKS, f"https://hc-ping.com/{TOKEN}")
    assert TOKEN not in repr(target.config)
    with pytest.raises(LabelError) as err:
        parse_target(container({"backup.enable": "true", "backup.ping": f"ftp://x/{TOKEN}"}), daily)
    assert "label backup.ping is invalid: accepted" in str(err.value) and TOKEN not in str(err.value)


def test_the_setting_is_parsed_and_a_bad_one_is_reported_without_its_value():
    settings = load_settings({"BACKUP_PING_URL": f"kuma+https://k.example/push/{TOKEN}", "BACKUP_PING_TIMEOUT": "2"})
    assert settings.ping == PingUrl(PingKind.KUMA, f"https://k.example/push/{TOKEN}") and settings.ping_timeout == 2
    assert load_settings({}).ping is None and load_settings({}).ping_timeout == 5
    with pytest.raises(SettingsError) as err:
        load_settings({"BACKUP_PING_URL": f"hc-ping.com/{TOKEN}", "BACKUP_PING_TIMEOUT": "0"})
    assert "BACKUP_PING_URL is invalid" in str(err.value) and "BACKUP_PING_TIMEOUT='0' is invalid" in str(err.value)
    assert TOKEN not in str(err.value)


def test_ping_failures_are_counted_per_target_and_kind_from_discovery_on(tmp_path):
    from prometheus_client import CollectorRegistry

    from sidecar.telemetry.metrics import Metrics, TargetView, record_ping_failure
    metrics = Metrics(CollectorRegistry(), state_path=tmp_path / "metrics.json")
    metrics.discovered([TargetView("app", ("data",), 1.0, 60.0, pings=("hc", "plain"))], 0)
    value = metrics.registry.get_sample_value
    assert value("backup_sidecar_ping_failures_total", {"target": "app", "kind": "hc"}) == 0
    record_ping_failure(tmp_path, "app", "hc")  # another process (a CLI backup) counts into the same record
    record_ping_failure(tmp_path, "app", "hc")
    metrics.observe(outcome("success"))  # an outcome keeps the count
    assert value("backup_sidecar_ping_failures_total", {"target": "app", "kind": "hc"}) == 2
    assert value("backup_sidecar_ping_failures_total", {"target": "app", "kind": "plain"}) == 0


def test_user_info_in_a_ping_url_becomes_basic_auth():
    from sidecar.pings.sender import _without_userinfo
    assert _without_userinfo("https://u:p%40ss@h.example:8443/x?y=1") == (
        "https://h.example:8443/x?y=1", "Basic dTpwQHNz")
    assert _without_userinfo("https://h.example/x") == ("https://h.example/x", None)
