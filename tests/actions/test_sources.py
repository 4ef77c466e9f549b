"""The Source seam: registry and what the volumes source says about a target."""

from __future__ import annotations

import pytest

from sidecar.actions import sources
from sidecar.core.errors import ConfigError

from .conftest import app_labels


@pytest.mark.parametrize("strategy, quiesce", [("stop", True), ("pause", True), ("hot", False)])
def test_volumes_describe_and_quiesce(engine, ctx, data, tmp_path, strategy, quiesce):
    engine.add_container("app-1", app_labels(strategy=strategy), {"/data": data, "/logs": tmp_path / "logs"})
    target = ctx.discover().find("app")
    [source] = sources.sources_for(target)
    assert source is sources.get("volumes")
    assert source.describe(target) == ("data", "logs")
    assert source.needs_quiesce(target) is quiesce


def test_unknown_source():
    with pytest.raises(ConfigError, match="unknown source 'oracle'"):
        sources.get("oracle")
