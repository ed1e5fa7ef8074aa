"""HTTP: the aiohttp application, routes (reference and admin), authentication,
envelopes, request guards, validation, the OpenAPI document, interface watching.

May import: `snapd.core` (the service and its types, never the store) and
`snapd.host`; never `snapd.cli` or `backends` internals.
"""
