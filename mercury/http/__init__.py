"""Mercury's public HTTP side: the one aiohttp server and the one login layer.

`server` is the listener that the web chat, the platform webhooks and the operator
dashboard all share; `auth` decides who may use it (bearer token or session cookie, with
throttled password checks and cross-site defences), with `sessions` (and
`stored_sessions`, the database-backed store the App uses), `origin` and `addresses` as
its parts. Nothing here knows about adapters: they hand their routes to
the App, which mounts them on this server, and use `auth` to guard them.
"""
