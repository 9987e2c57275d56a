"""WebSocket proxying: the upgrade on websocket routes, the upstream handshake, the relay."""
