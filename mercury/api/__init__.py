"""The host API agents call back over a unix socket, authenticated by per-run tokens.

runhost.py      RunHost: the server, tokens and usage meter every run gets (RunAccess)
server.py       HostApiServer: one unix socket per run, auth middleware
auth.py         per-run token check, the JSON error shape, permission checks
tokens.py       the per-run tokens and what they grant (RunGrant)
routes/         the space endpoints mercury-ctl calls, one module per resource
model_proxy.py  the model proxy (with proxy_rules.py), metered by usage.py
usage_stream.py usage read from streamed model responses
oneshot.py      `mercury sandbox run`: one run with its host API, no chat platform
"""
