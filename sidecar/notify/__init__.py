"""Notifications about backup outcomes, in three modules (import the one you need; this
package re-exports nothing). The settings' values (NotifyOn, NotifyConfig, the checked
apprise URLs) are pure and live in the core: sidecar/core/notify_urls.py.

- `redact`: secrets of the configured URLs masked in every log record;
- `state`: which targets are failing (`.sidecar/notify.json`);
- `sender`: Notifier, decide, render: what is news, its text, delivery in the background.

`notifier` is the one way in to the sender: it imports `sender` (and so apprise, about 0.3 s)
by name, only when NOTIFY_URLS is set; a command that notifies nothing never loads it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.notify_urls import NotifyConfig

if TYPE_CHECKING:
    from .sender import Notifier

SENDER = f"{__name__}.sender"  # imported on first use


def notifier(config: NotifyConfig | None, state_path: Path) -> Notifier | None:
    """The Notifier for NOTIFY_URLS' `config` keeping its state in `state_path`; None (and
    nothing imported) when no URL is set."""
    if config is None:
        return None
    return importlib.import_module(SENDER).Notifier(config, state_path)

