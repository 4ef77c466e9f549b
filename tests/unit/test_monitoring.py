"""monitoring/: the alert rules pass promtool's checks and their own unit tests (and those
tests catch a broken rule), the Grafana dashboard is well formed and queries only metrics
the sidecar exports (every query filtered by the node variable; a fleet table per node),
and the Compose and Prometheus files point at files that exist.

`dashboard_metric_names()` and `alert_metric_names()` are for the end-to-end tests: they
compare these names with a real scrape of the sidecar.

No YAML library is needed: promtool parses the rule files, and the few facts read here from
YAML files are read with anchored regular expressions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERT_TESTS = MONITORING / "alerts.test.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
COMPOSE = MONITORING / "compose.monitoring.yaml"
PROVISIONING = MONITORING / "grafana" / "provisioning"

# What the sidecar exports (sidecar/telemetry/metrics.py), as names in the exposition format.
TARGET_VOLUME_METRICS = {
    "backup_sidecar_last_success_timestamp_seconds",
    "backup_sidecar_last_attempt_timestamp_seconds",
    "backup_sidecar_last_status",
    "backup_sidecar_archive_size_bytes",
    "backup_sidecar_offsite_last_success_timestamp_seconds",  # also destination
}
TARGET_METRICS = {
    "backup_sidecar_runs_total",  # also result
    "backup_sidecar_duration_seconds_bucket",
    "backup_sidecar_duration_seconds_sum",
    "backup_sidecar_duration_seconds_count",
    "backup_sidecar_downtime_seconds",
    "backup_sidecar_next_run_timestamp_seconds",
    "backup_sidecar_expected_interval_seconds",
    "backup_sidecar_copies",
    "backup_sidecar_consistency_risk",  # also app, preset
}
GLOBAL_METRICS = {
    "backup_sidecar_targets",
    "backup_sidecar_target_config_errors",
    "backup_sidecar_up",
    "backup_sidecar_build_info",
}
# Only from sidecars on Swarm manager nodes: one series per node of the swarm (swarm_node).
SWARM_METRICS = {"backup_sidecar_swarm_node_ready"}
EXPORTED = TARGET_VOLUME_METRICS | TARGET_METRICS | GLOBAL_METRICS | SWARM_METRICS
PER_TARGET = TARGET_VOLUME_METRICS | TARGET_METRICS
# Made by Prometheus, not scraped: per scraped address, without the sidecar's node label.
SYNTHETIC = {"up"}

# Grafana's variables, replaced by something PromQL accepts before promtool parses a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1d",
    "${datasource}": "x",
    "$target": ".*",
    "$node": ".*",
}


# --- PromQL names -------------------------------------------------------------------------

_PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                    "group_left", "group_right", "inf", "nan", "start", "end"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: not functions, aggregations, keywords,
    label names (in matchers, `by`/`on` lists), strings, durations or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


@pytest.mark.parametrize("expr, names", [
    ("backup_sidecar_up", {"backup_sidecar_up"}),
    ('up{job="backup-sidecar"} == 0', {"up"}),
    ('sum by (target, le) (increase(a_bucket{target=~"$target", le!="x"}[$__range]))', {"a_bucket"}),
    ("(time() - a > 0) > ignoring(volume) group_left 1.5 * b + 3600", {"a", "b"}),
    ('count(a == 0) or vector(0) offset 5m', {"a"}),
    ("histogram_quantile(0.95, sum(rate(x_bucket[5m])) without (instance))", {"x_bucket"}),
    ("rec:first_seen and on(job) absent(c{job=\"or\"})", {"rec:first_seen", "c"}),
    ("1e3 * d", {"d"}),
], ids=["bare", "matcher-string", "by-list-and-vars", "group-modifiers", "vector-offset",
        "without-after", "recorded-and-absent", "exponent"])
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


# --- the dashboard --------------------------------------------------------------------------

def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def walk_panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, the ones inside (collapsed) rows included."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def _variable_query(variable: dict) -> str:
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else query


def panel_exprs(dashboard: dict | None = None) -> list[str]:
    dashboard = dashboard if dashboard is not None else load_dashboard()
    return [t["expr"] for p in walk_panels(dashboard["panels"]) for t in p.get("targets", [])]


def dashboard_exprs(dashboard: dict | None = None) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries
    (`label_values(METRIC, label)` gives METRIC)."""
    dashboard = dashboard if dashboard is not None else load_dashboard()
    exprs = panel_exprs(dashboard)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = _variable_query(variable)
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query)
        exprs.append(m.group(1) if m else re.sub(r"^\s*query_result\((.*)\)\s*$", r"\1", query))
    return exprs


def dashboard_metric_names(path: Path = DASHBOARD) -> set[str]:
    """Names of the scraped series the dashboard queries, as they appear in the sidecar's
    /metrics (histogram suffixes, `_total`); Prometheus' own `up` left out. Compare with a
    scrape taken after a first backup: last_status and archive_size_bytes only exist
    once a volume has been attempted."""
    names: set[str] = set()
    for expr in dashboard_exprs(load_dashboard(path)):
        names |= promql_metric_names(expr)
    return names - SYNTHETIC


def test_dashboard_identity() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "backup-sidecar"
    assert dashboard["title"] == "Backup sidecar"
    assert 36 <= dashboard["schemaVersion"] <= 39


def test_dashboard_variables() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    node, target = variables["node"], variables["target"]
    assert node["type"] == target["type"] == "query"
    assert node["datasource"]["uid"] == target["datasource"]["uid"] == "${datasource}"
    assert _variable_query(node) == "label_values(backup_sidecar_up, node)"
    # The targets offered are those of the nodes chosen.
    assert re.fullmatch(r'label_values\(backup_sidecar_\w+\{node=~"\$node"\}, target\)', _variable_query(target))
    for variable in (node, target):
        assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"
    names = list(variables)
    assert names.index("node") < names.index("target"), "target's query uses $node: node comes first"


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    panels = list(walk_panels(dashboard["panels"]))
    nested = [p for row in panels if row["type"] == "row" for p in row.get("panels", [])]
    assert nested, "a collapsed row holds panels: the walk must reach them"
    queried = [p for p in panels if p["type"] != "row"]  # rows hold no queries
    assert len(queried) >= 12
    for panel in queried:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_queries_only_exported_metrics_and_all_of_them() -> None:
    names = dashboard_metric_names()
    assert names <= EXPORTED, f"not exported by the sidecar: {sorted(names - EXPORTED)}"
    assert names == EXPORTED, f"exported but not on the dashboard: {sorted(EXPORTED - names)}"
    every = set().union(*(promql_metric_names(e) for e in dashboard_exprs()))
    assert every - names <= SYNTHETIC


def test_per_target_queries_follow_the_target_variable() -> None:
    for expr in panel_exprs():
        for name in promql_metric_names(expr) & PER_TARGET:
            uses = re.findall(rf"(?<![\w:]){re.escape(name)}(?![\w:])(\{{[^}}]*\}})?", expr)
            for matcher in uses:
                assert 'target=~"$target"' in matcher, f"{name} without the target filter in: {expr}"


def selectors(expr: str, name: str) -> list[str]:
    """The label matchers ("{...}" or "") of each use of the metric `name` in `expr`."""
    return re.findall(rf"(?<![\w:]){re.escape(name)}(?![\w:])(\{{[^}}]*\}})?", expr)


def test_every_query_follows_the_node_variable() -> None:
    # Every series the sidecar exports carries node; swarm_node_ready names the node it is
    # about in swarm_node. `up` is Prometheus' own, per address, with no node label.
    for expr in panel_exprs():
        for name in promql_metric_names(expr) - SYNTHETIC:
            label = "swarm_node" if name in SWARM_METRICS else "node"
            for matcher in selectors(expr, name):
                assert f'{label}=~"$node"' in matcher, f"{name} without the node filter in: {expr}"
        for by in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            if "target" in by:
                assert "node" in by, f"a target of one node must not add up with another's: {expr}"


def test_legends_name_the_node() -> None:
    # Two nodes back up the same global service under the same target name.
    for panel in walk_panels(load_dashboard()["panels"]):
        for target in panel.get("targets", []):
            legend = target.get("legendFormat", "")
            if "{{target}}" in legend or (legend == "{{instance}}" and "backup_sidecar_" in target["expr"]):
                assert "{{node}}" in legend, f"{panel['title']}: {legend}"


def fleet_table() -> dict:
    tables = [p for p in walk_panels(load_dashboard()["panels"]) if p["type"] == "table"]
    assert len(tables) == 1, "one fleet table"
    return tables[0]


def test_fleet_table_has_one_row_per_node() -> None:
    table = fleet_table()
    assert table["gridPos"]["y"] <= 1, "the fleet comes first"
    queries = {t["refId"]: t for t in table["targets"]}
    for query in queries.values():
        assert query["format"] == "table" and query["instant"], query["refId"]
        # One row per node: every query aggregates by node and nothing else.
        outer = re.match(r"\s*\w+ by \((\w+)\)", query["expr"])
        assert outer and outer.group(1) == "node", query["expr"]
    used = set().union(*(promql_metric_names(q["expr"]) for q in queries.values()))
    assert {"backup_sidecar_up", "backup_sidecar_swarm_node_ready", "backup_sidecar_targets",
            "backup_sidecar_last_status", "backup_sidecar_last_success_timestamp_seconds",
            "backup_sidecar_next_run_timestamp_seconds"} <= used
    # Nodes the managers list but no sidecar reports get a row too: swarm_node becomes node.
    ready = next(q["expr"] for q in queries.values() if "backup_sidecar_swarm_node_ready" in q["expr"])
    assert 'label_replace(' in ready and '"node", "$1", "swarm_node"' in ready
    # The frames are merged on node, and every query's value has a column name.
    steps = [t["id"] for t in table["transformations"]]
    assert steps[0] == "merge"
    organize = next(t["options"] for t in table["transformations"] if t["id"] == "organize")
    assert {f"Value #{ref}" for ref in queries} <= set(organize["renameByName"])
    named = {o["matcher"]["options"] for o in table["fieldConfig"]["overrides"]}
    assert named <= set(organize["renameByName"].values()), named


def test_age_panel_is_coloured_against_the_schedule_interval() -> None:
    panels = [p for p in walk_panels(load_dashboard()["panels"]) if p["type"] != "row"]
    age = [p for p in panels
           if any({"backup_sidecar_last_success_timestamp_seconds", "backup_sidecar_expected_interval_seconds"}
                  <= promql_metric_names(t["expr"]) and "/" in t["expr"] for t in p["targets"])]
    assert age, "a panel shows the age of the last backup relative to the expected interval"
    steps = age[0]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["color"] for s in steps] == ["green", "yellow", "red"]
    assert [s["value"] for s in steps] == [None, 1, 1.5]


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool parses rule files, so every query becomes a recording rule.
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dashboard-rules.yaml"
    rules.write_text("\n".join(lines) + "\n")
    result = run(promtool, "check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr


# --- the alert rules ------------------------------------------------------------------------

def rule_blocks(text: str) -> dict[str, list[str]]:
    """alert or record name -> the text of each rule with that name (up to the next rule)."""
    starts = list(re.finditer(r"^\s*- (?:alert|record):\s*(\S+)\s*$", text, re.M))
    blocks: dict[str, list[str]] = {}
    for m, nxt in zip(starts, starts[1:] + [None]):
        blocks.setdefault(m.group(1), []).append(text[m.start():nxt.start() if nxt else len(text)])
    return blocks


def rule_expr(block: str) -> str:
    m = re.search(r"^(\s*)expr:[ \t]*(.*)$", block, re.M)
    assert m, block
    indent, value = len(m.group(1)), m.group(2).strip()
    if value and value[0] not in "|>":
        return value.strip("'\"") if value[0] in "'\"" else value
    body = []
    for line in block[m.end():].split("\n")[1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line.strip())
    return "\n".join(body).strip()


def rule_field(block: str, key: str) -> str | None:
    m = re.search(rf"^\s*{key}:[ \t]*(.*)$", block, re.M)
    return m.group(1).strip().strip("\"'") if m else None


def alert_metric_names(path: Path = ALERTS) -> set[str]:
    """Names of the scraped series the alert rules use (recorded series and `up` left out)."""
    blocks = rule_blocks(path.read_text())
    names = set().union(*(promql_metric_names(rule_expr(b)) for bs in blocks.values() for b in bs))
    return {n for n in names if ":" not in n} - SYNTHETIC


def alert_tests() -> list[tuple[str, bool, str]]:
    """(alertname, fires, the exp_alerts text) for every alert_rule_test case."""
    text = ALERT_TESTS.read_text()
    cases = []
    for m in re.finditer(r"^\s*alertname:\s*(\S+)\s*\n\s*exp_alerts:[ \t]*(\[\])?(.*?)(?=^\s*- eval_time:|^\s*- name:|\Z)",
                         text, re.M | re.S):
        cases.append((m.group(1), m.group(2) is None, m.group(3)))
    return cases


REQUIRED_ALERTS = {"BackupTooOld", "BackupFailed", "OffsiteCopyTooOld", "BackupCopiesBelowTwo",
                   "BackupHotCopyOfDatabase", "BackupConfigErrors", "BackupSidecarDown", "BackupSidecarNodeWithoutSidecar"}


def alerts() -> dict[str, list[str]]:
    return {name: blocks for name, blocks in rule_blocks(ALERTS.read_text()).items()
            if all(re.match(r"\s*- alert:", b) for b in blocks)}


def test_required_alerts_exist_in_group_backup_sidecar() -> None:
    assert REQUIRED_ALERTS <= set(alerts())
    assert re.search(r"^\s*- name:\s*backup-sidecar\s*$", ALERTS.read_text(), re.M)


def test_alerts_use_only_exported_metrics() -> None:
    names = alert_metric_names()
    assert names <= EXPORTED, f"not exported by the sidecar: {sorted(names - EXPORTED)}"
    recorded = {n for n, bs in rule_blocks(ALERTS.read_text()).items() if re.match(r"\s*- record:", bs[0])}
    for blocks in rule_blocks(ALERTS.read_text()).values():
        for block in blocks:
            for name in promql_metric_names(rule_expr(block)):
                assert name in EXPORTED | SYNTHETIC | recorded, name


def test_every_alert_has_severity_and_names_what_it_is_about() -> None:
    fired_labels: dict[str, str] = {}
    for name, fires, body in alert_tests():
        if fires:
            fired_labels[name] = fired_labels.get(name, "") + body
    for name, blocks in alerts().items():
        for block in blocks:
            assert rule_field(block, "severity") in {"critical", "warning"}, name
            summary, description = rule_field(block, "summary"), rule_field(block, "description")
            assert summary and description is not None, name
            per_target = bool(promql_metric_names(rule_expr(block)) & PER_TARGET)
            if per_target or re.search(r"\btarget:", fired_labels.get(name, "")):
                assert "$labels.target" in summary, f"{name}: the summary must name the target"
            if re.search(r"\bvolume:", fired_labels.get(name, "")):
                assert "$labels.volume" in summary, f"{name}: the summary must name the volume"
            for label in ("node", "swarm_node"):
                if re.search(rf"[{{ ]{label}:", fired_labels.get(name, "")):
                    assert f"$labels.{label}" in summary, f"{name}: the summary must name the {label}"


def test_every_alert_has_firing_and_quiet_test_cases() -> None:
    cases = alert_tests()
    assert len(cases) >= 2 * len(REQUIRED_ALERTS)
    for name in alerts():
        assert any(n == name and fires for n, fires, _ in cases), f"{name}: no firing case"
        assert any(n == name and not fires for n, fires, _ in cases), f"{name}: no quiet case"


# --- promtool ------------------------------------------------------------------------------

def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool not found (apt-get install -y prometheus)"
        if os.environ.get("SIDECAR_TESTBED") == "1" or os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_promtool_check_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config(promtool: str) -> None:
    result = run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_alert_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# Each breaks one thing, in a copy: the alert unit tests must then fail, naming the alert.
# (file changed, text, replacement, alert that must fail, test group run: the whole file
# takes seconds of evaluations, one group a fraction of one)
HOURLY = "too old - hourly schedule, fresh and never-backed-up targets"
MUTATIONS = {
    "broken expectation": (
        ALERT_TESTS, "target: fresh, volume: data}", "target: fresh, volume: other}", "BackupTooOld", HOURLY),
    "never-backed-up counted from the epoch": (
        ALERTS, "              or\n                backup_sidecar:first_seen_timestamp_seconds\n",
        "              or\n                backup_sidecar_last_success_timestamp_seconds\n", "BackupTooOld", HOURLY),
    "first appearance forgotten on a restart": (
        ALERTS, "last_over_time(backup_sidecar:first_seen_timestamp_seconds[1h])",
        "backup_sidecar:first_seen_timestamp_seconds", "BackupTooOld", HOURLY),
    "failure without an attempt": (
        ALERTS, "and backup_sidecar_last_attempt_timestamp_seconds > 0",
        "and backup_sidecar_last_attempt_timestamp_seconds >= 0", "BackupFailed",
        "failed - fires on a failed run, clears on the next success"),
    "copies of a target never backed up": (
        ALERTS, "min without (volume) (backup_sidecar_last_success_timestamp_seconds) > 0",
        "min without (volume) (backup_sidecar_last_success_timestamp_seconds) >= 0", "BackupCopiesBelowTwo",
        "copies below two - 1 vs 2, fresh targets quiet"),
    "sidecar down reported twice": (
        ALERTS, "or on(job)\n", "or\n", "BackupSidecarDown", "sidecar down - scrape failing (one alert, not two)"),
    "a node that is down counted as Ready": (
        ALERTS, 'backup_sidecar_swarm_node_ready{job="backup-sidecar"} == 1)',
        'backup_sidecar_swarm_node_ready{job="backup-sidecar"} >= 0)', "BackupSidecarNodeWithoutSidecar",
        "node without sidecar - Ready node, sidecar gone"),
    "a stopped scheduler reported as a missing sidecar too": (
        ALERTS, 'max by (node) (backup_sidecar_up{job="backup-sidecar"})',
        'max by (node) (backup_sidecar_up{job="backup-sidecar"} == 1)', "BackupSidecarNodeWithoutSidecar",
        "node without sidecar - Ready node, sidecar gone"),
    "the node left out of a summary": (
        ALERTS, 'summary: "Backup of {{ $labels.target }}/{{ $labels.volume }}{{ with $labels.node }} on {{ . }}{{ end }}',
        'summary: "Backup of {{ $labels.target }}/{{ $labels.volume }}', "BackupTooOld",
        "too old - the same target on two nodes"),
}


def only_test_group(text: str, name: str) -> str:
    """The unit test file with one of its test groups."""
    head, sep, rest = text.partition("\ntests:\n")
    groups = re.split(r"(?m)^(?=  - name: )", rest)
    kept = [g for g in groups if g.startswith(f"  - name: {name}\n")]
    assert sep and len(kept) == 1, f"test group {name!r} not found once"
    return head + sep + kept[0]


def test_alert_unit_tests_catch_broken_rules_and_expectations(promtool: str, tmp_path: Path) -> None:
    # Beside each mutated copy, the same test group unchanged (the control) must pass.
    procs = {}
    for i, (name, (changed, old, new, _, group)) in enumerate(MUTATIONS.items()):
        for mutated in (False, True):
            folder = tmp_path / f"{i}-{'mutated' if mutated else 'control'}"
            folder.mkdir()
            for source in (ALERTS, ALERT_TESTS):
                text = source.read_text()
                if mutated and source == changed:
                    assert text.count(old) == 1, f"{name}: {old!r} must occur once in {source.name}"
                    text = text.replace(old, new)
                if source == ALERT_TESTS:
                    text = only_test_group(text, group)
                (folder / source.name).write_text(text)
            procs[name, mutated] = subprocess.Popen(
                [promtool, "test", "rules", ALERT_TESTS.name], cwd=folder,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for (name, mutated), proc in procs.items():
        output, _ = proc.communicate(timeout=120)
        if not mutated:
            assert proc.returncode == 0, f"{name} (control):\n{output}"
            continue
        alertname = MUTATIONS[name][3]
        assert proc.returncode != 0, f"{name}: the alert unit tests still pass"
        assert "FAILED" in output and f"alertname: {alertname}" in output, f"{name}:\n{output}"


# --- Prometheus, Compose and Grafana provisioning --------------------------------------------

def test_prometheus_scrapes_the_sidecar_as_the_rules_expect() -> None:
    text = PROMETHEUS_CONFIG.read_text()
    assert re.search(r"job_name:\s*backup-sidecar\s*\n\s*static_configs:\s*\n\s*- targets:\s*\[\"backup:9918\"\]",
                     text)
    assert re.search(r"^rule_files:\s*\n\s*- alerts\.yaml\s*$", text, re.M)
    assert 'job="backup-sidecar"' in ALERTS.read_text()


def compose_mounts() -> list[tuple[str, str]]:
    """(source, container path) of the bind mounts of compose.monitoring.yaml."""
    return re.findall(r"^\s*-\s*(\./[^:\s]+):([^:\s]+)(?::ro)?\s*$", COMPOSE.read_text(), re.M)


def test_compose_mounts_exist_relative_to_the_repository_root() -> None:
    # Compose resolves relative paths against the first -f file: compose.example.yaml.
    mounts = dict(compose_mounts())
    assert {"./monitoring/prometheus.yml", "./monitoring/alerts.yaml", "./monitoring/grafana/provisioning",
            "./monitoring/grafana-dashboard.json"} <= set(mounts)
    for source in mounts:
        assert (ROOT / source).exists(), source
    # Prometheus finds the rules beside its configuration (rule_files is relative).
    assert mounts["./monitoring/alerts.yaml"] == str(Path(mounts["./monitoring/prometheus.yml"]).parent / "alerts.yaml")
    # Grafana's dashboard provider reads the folder the dashboard is mounted into.
    provider = (PROVISIONING / "dashboards" / "backup-sidecar.yaml").read_text()
    folder = re.search(r"^\s*path:\s*(\S+)\s*$", provider, re.M).group(1)
    assert str(Path(mounts["./monitoring/grafana-dashboard.json"]).parent) == folder


def test_compose_images_match_the_example_stack() -> None:
    # The override replaces the example's images: a different tag would silently win.
    example = (ROOT / "compose.example.yaml").read_text()
    override = COMPOSE.read_text()
    for image in ("prom/prometheus", "grafana/grafana"):
        pattern = rf"^\s*image:\s*({re.escape(image)}\S*)\s*$"
        assert re.findall(pattern, override, re.M) == re.findall(pattern, example, re.M) != [], image


def test_grafana_datasource_points_at_the_compose_prometheus() -> None:
    text = (PROVISIONING / "datasources" / "prometheus.yaml").read_text()
    assert re.search(r"^\s*type:\s*prometheus\s*$", text, re.M)
    assert re.search(r"^\s*url:\s*http://prometheus:9090\s*$", text, re.M)
    assert re.search(r"^\s{2}prometheus:\s*$", COMPOSE.read_text(), re.M)


def test_compose_config_merges_with_the_example() -> None:
    if shutil.which("docker-compose"):
        argv = ["docker-compose"]
    elif shutil.which("docker") and run("docker", "compose", "version").returncode == 0:
        argv = ["docker", "compose"]
    else:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    result = run(*argv, "-f", "compose.example.yaml", "-f", "monitoring/compose.monitoring.yaml", "config",
                 cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for source in ("monitoring/prometheus.yml", "monitoring/alerts.yaml", "monitoring/grafana-dashboard.json"):
        assert f"{ROOT / source}:" in result.stdout, source
