"""The core: the service (the one path for every mutation), the store (SQLite; only
the core touches it), journal, reconcile, reaper, tokens, errors and the clock.

May import: `backends`, the standard library and `snapd.core` itself; never
`snapd.http`, `snapd.host` or `snapd.cli`.
"""
