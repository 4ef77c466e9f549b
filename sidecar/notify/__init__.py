"""Notifications about backup outcomes, in three modules (import the one you need; this
package re-exports nothing). The settings' values (NotifyOn, NotifyConfig, the checked
apprise URLs) are pure and live in the core: sidecar/core/notify_urls.py.

- `redact`: secrets of the configured URLs masked in every log record;
- `state`: which targets are failing (`.sidecar/notify.json`);
- `sender`: Notifier, decide, render: what is news, its text, delivery in the background.
"""
