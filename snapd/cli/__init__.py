"""The `snapd` command: argument parsing and output, the HTTP client it talks
through, and bash completion generated from the parser.

May import: `snapd.host` (config, for `serve`), `snapd.core.clock` and `.text`, and the
daemon (`snapd.server`) lazily for `serve`; never the store.
"""
