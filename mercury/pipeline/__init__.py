"""The message pipeline: inbound handling, the durable per-space queue, runs, delivery."""
