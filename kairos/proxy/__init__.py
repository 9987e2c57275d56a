"""The proxied request: the catch-all endpoint, the per-request exchange, forwarding to a backend."""
