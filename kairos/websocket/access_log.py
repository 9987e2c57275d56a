"""What the access log adds for a WebSocket upgrade, and its outcome count.

The access log (middleware/access_log.py) writes one line per upgrade when it
ends: for an accepted connection that is when it closes, with the messages and
bytes each way, the close code, its reason and who closed (client, upstream or
gateway); a refused upgrade gets its line at once, with the status the client
saw. Outcomes (`kairos_websocket_upgrades_total{outcome}`): `accepted`,
`upstream_refused` (the upstream answered non-101), or the gateway's error kind
(`forbidden`, `authentication_error`, `rate_limit_exceeded`,
`too_many_connections`, `upstream`, `timeout`, ...).
"""

from __future__ import annotations

from typing import Any

from kairos.observability.metrics import WEBSOCKET_UPGRADES
from kairos.types import Scope
from kairos.websocket.endpoint import SESSION_KEY, UPSTREAM_STATUS_KEY

_outcomes: dict[tuple[str, str], Any] = {}


def count_upgrade(scope: Scope, route_name: str, status: int) -> None:
    if status == 101:
        outcome = "accepted"
    elif UPSTREAM_STATUS_KEY in scope:
        outcome = "upstream_refused"
    else:
        outcome = scope.get("kairos.error") or "refused"
    key = (route_name, outcome)
    child = _outcomes.get(key)
    if child is None:
        child = _outcomes[key] = WEBSOCKET_UPGRADES.labels(route_name, outcome)
    child.inc()


def connection_fields(scope: Scope, status: int) -> dict[str, Any]:
    """The access-log fields of a relayed connection (none for a refused upgrade)."""
    session = scope.get(SESSION_KEY)
    if session is None or status != 101:
        return {"protocol": "websocket"}
    ending = session.ending
    return {
        "protocol": "websocket",
        "messages_in": session.frames_in,
        "messages_out": session.frames_out,
        "bytes_in": session.bytes_in,
        "bytes_out": session.bytes_out,
        "close_code": ending.code if ending is not None else None,
        "close_reason": ending.reason if ending is not None else None,
        "closed_by": ending.closed_by if ending is not None else None,
    }
