"""What the sidecar tells its operators besides notifications and pings (adapters).

- `metrics`: the Prometheus collector (series built from state at scrape time) and the
  /metrics and /healthz endpoint;
- `logs`: logging set-up, JSON lines or text, with the structured fields.
"""
