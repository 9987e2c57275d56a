"""Pure-ASGI middleware layers, one job each."""
