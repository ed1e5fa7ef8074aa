"""Host plumbing: configuration, systemd (notify, socket activation), Prometheus
metrics and structured logging.

May import: `snapd.core` types and the standard library; never `snapd.http` or
`snapd.cli`.
"""
