"""Heartbeat pings (dead man's switch monitoring: healthchecks.io, Uptime Kuma, any URL),
in three modules (import the one you need; this package re-exports nothing, so the pure
`urls` never pulls in the sender):

- `urls`: PingKind, PingUrl, parse_ping_url and `request_for`, the request each event of a
  run makes for each kind (core: pure values, no network);
- `tail`: the last lines each target's run logged (a logging handler, bounded);
- `sender`: Pinger, which sends them in the background, never holding up a backup.
"""
