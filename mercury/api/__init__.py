"""The host API agents call back over a unix socket, authenticated by per-run tokens."""
