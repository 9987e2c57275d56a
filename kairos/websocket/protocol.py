"""uvicorn's WebSocket protocol with permessage-deflate decided per route.

uvicorn negotiates compression for the whole server (`ws_per_message_deflate`,
on by default) before the app sees the request. This subclass offers none at
first and negotiates permessage-deflate when the app's `websocket.accept`
carries `"kairos.compression": True` (routes with `websocket.compression`).
`kairos serve` uses it; with plain uvicorn pass
`--ws kairos.websocket.protocol:WebSocketProtocol` for the same behaviour
(otherwise uvicorn's server-wide setting applies to every route).
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory


# uvicorn and websockets log every accepted/rejected upgrade and "connection open" at info:
# the gateway's access line already says all of it, so only their warnings and errors pass.
_LOGGER = logging.getLogger("kairos.websocket.protocol")
_LOGGER.setLevel(logging.WARNING)


class WebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.available_extensions = []
        self.logger = _LOGGER
        self.conn.logger = _LOGGER

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.accept" and message.get("kairos.compression") and not self.handshake_complete:
            # Same settings as uvicorn's own (12-bit windows, memLevel 5: ~bounded memory per connection).
            self.conn.available_extensions = [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
                )
            ]
            self.response = self.conn.accept(self.request)
        await super().send(message)
