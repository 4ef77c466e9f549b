"""Heartbeat pings (dead man's switch monitoring: healthchecks.io, Uptime Kuma, any URL),
in two modules (import the one you need; this package re-exports nothing). The URLs as
values and the request each event of a run makes for each kind (PingKind, PingUrl,
parse_ping_url, request_for) are pure and live in the core: sidecar/core/ping_urls.py.

- `tail`: the last lines each target's run logged (a logging handler, bounded);
- `sender`: Pinger, which sends them in the background, never holding up a backup.
"""
