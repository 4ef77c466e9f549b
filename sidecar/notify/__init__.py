"""Notifications about backup outcomes, in four modules (import the one you need; this
package re-exports nothing, so the pure `urls` never pulls in the sender):

- `urls`: NotifyOn, NotifyConfig, parse_notify_on, parse_notify_urls (core: pure values and
  parsing with apprise's own parser; settings use these);
- `redact`: secrets of the configured URLs masked in every log record;
- `state`: which targets are failing (`.sidecar/notify.json`);
- `sender`: Notifier, decide, render: what is news, its text, delivery in the background.
"""
