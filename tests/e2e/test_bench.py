"""bench/bench.py runs end to end in a tiny mode, writes its table and JSON, and leaves
nothing behind. No time is asserted (figures belong to the benchmark, not to the tests)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import pytest

from .support import REPO

KEYS = {"title", "unit", "median", "baseline", "baseline_median", "ratio", "target", "target_on", "met",
        "samples", "baseline_samples"}


@pytest.mark.slow  # the bench tool, not the product
def test_bench_tiny_run_reports_medians_and_ratios(docker_client, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench.py"), "--size-mb", "20", "--runs", "1",
         "--only", "backup,rss", "--json", str(out)],
        check=False, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]

    report = json.loads(out.read_text())
    assert {"command", "started", "finished", "machine", "options", "data", "measures", "quiet",
            "load_per_core_at_end"} <= set(report)
    # how busy the cores were before the start decides whether ratios are printed
    assert {"busy_before_start", "max_busy", "quiet"} <= set(report["quiet"])
    assert ("no ratios" in result.stdout) == (not report["quiet"]["quiet"])
    assert set(report["measures"]) == {"backup", "peak_rss"}
    backup, rss = report["measures"]["backup"], report["measures"]["peak_rss"]
    assert KEYS <= set(backup) and KEYS <= set(rss)
    assert len(backup["samples"]) == 1 and len(backup["baseline_samples"]) == 1
    assert backup["ratio"] > 0 and backup["target_on"] == "ratio" and backup["met"] in (True, False)
    assert rss["baseline_samples"] is None and rss["median"] > 0 and rss["target_on"] == "median"
    assert report["data"]["files"] > 100
    assert "| backup / tar|zstd" in result.stdout and "| peak RSS, 20 MB" in result.stdout

    run_id = re.search(r"run ([0-9a-f]{8}):", result.stderr).group(1)
    mine = {"label": f"backup-sidecar-bench={run_id}"}
    assert docker_client.containers.list(all=True, filters=mine) == []
    assert docker_client.volumes.list(filters=mine) == []
