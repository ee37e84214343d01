"""The platform-independent domain: messages, routing decisions, queue rules.

No I/O lives here (no Docker, no HTTP, no database): an import-linter contract in CI
enforces it, so every decision can be tested as a plain function over plain data.
"""
