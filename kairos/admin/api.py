"""The admin API as a Starlette app (served on its own port by listener.py).

Every call: throttle check -> bearer token -> role -> handler; then one `admin`
log event (who, what, result). Every change also logs an `audit` event with a
summary of the difference (route ids and setting names, never values).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kairos import __version__
from kairos.admin import schemas
from kairos.admin.control import reload_counts
from kairos.admin.document import etag_of, find_route, redacted, restore_secrets, route_id, router_id, summarize
from kairos.admin.match import match_request
from kairos.admin.schemas import Operation
from kairos.admin.stats import StatsSampler, read_sample, read_workers_sample
from kairos.admin.store import ConfigStore
from kairos.admin.tokens import FailureThrottle, Identity, TokenSetupError, TokenTable, bearer_token
from kairos.config import ConfigError, parse_config
from kairos.errors import rfc3339_now
from kairos.middleware.request_id import RequestID
from kairos.observability.logging import log_event, redact
from kairos.types import Message, Receive, Scope, Send

UI_DIR = Path(__file__).resolve().parent / "ui"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATUS_KIND = {
    400: "bad_request", 401: "authentication_error", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    412: "precondition_failed", 422: "invalid_config", 428: "precondition_required", 429: "rate_limit_exceeded",
    500: "internal", 501: "not_supported", 502: "upstream",
}


class Problem(Exception):
    def __init__(self, status: int, message: str, problems: list[str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems
        self.headers = headers or {}


def error_response(request: Request, exc: Problem) -> Response:
    body: dict[str, Any] = {"error": exc.message, "type": STATUS_KIND.get(exc.status, "bad_request"),
                            "request_id": request.scope.get("kairos.request_id", ""), "timestamp": rfc3339_now()}
    if exc.problems is not None:
        body["problems"] = exc.problems
    headers = {"cache-control": "no-store", **exc.headers}
    if exc.status == 401:
        headers["www-authenticate"] = 'Bearer realm="kairos-admin"'
    return Response(orjson.dumps(body), exc.status, headers=headers, media_type="application/json")


def json_response(data: Any, status: int = 200, etag: str | None = None) -> Response:
    headers = {"cache-control": "no-store"}
    if etag:
        headers["etag"] = etag
    return Response(orjson.dumps(data), status, headers=headers, media_type="application/json")


class AdminState:
    def __init__(self, control: Any, config_path: str | None, tokens: TokenTable,
                 throttle: FailureThrottle | None = None) -> None:
        self.control = control
        self.config_path = config_path
        history = control.config.admin.history_size
        self.store = ConfigStore(config_path, history) if config_path else None
        self.tokens = tokens
        self.tokens_from = control.config.admin
        self.throttle = throttle or FailureThrottle()
        self.lock = asyncio.Lock()
        self.last_change: dict[str, Any] | None = None
        self.sampler = StatsSampler(read_workers_sample if control.mode == "workers" else read_sample)
        self.sampler.routes = self.route_keys

    def route_keys(self) -> list[tuple[str, str, list[str]]]:
        out = []
        for rc in self.control.config.routers:
            methods = list(rc.methods) + (["HEAD"] if "GET" in rc.methods and "HEAD" not in rc.methods else [])
            out.append((router_id(rc), rc.external_path, methods))
        return out

    def current_tokens(self) -> TokenTable:
        """The tokens of the running config: a reload that rotates a token (in the file, or its
        environment variable's value at the next start) takes effect without a restart."""
        admin = self.control.config.admin
        if admin != self.tokens_from:
            try:
                self.tokens = TokenTable.from_config(admin)
            except TokenSetupError as exc:
                log_event("admin_tokens_kept", logging.ERROR, reason=str(exc))
            self.tokens_from = admin
        return self.tokens

    def need_store(self) -> ConfigStore:
        if self.store is None:
            raise Problem(501, "the gateway was started from an object, not a file: nothing to read or write")
        return self.store

    def read(self) -> tuple[bytes, dict[str, Any]]:
        try:
            return self.need_store().read()
        except ConfigError as exc:
            raise Problem(500, "the config file cannot be read: " + "; ".join(redact(p) for p in exc.problems)) from None


# --------------------------------------------------------------------------- request plumbing


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > 4 * 1024 * 1024:
        raise Problem(400, "request body larger than 4 MiB")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"the body is not JSON: {exc}") from None


async def json_object(request: Request) -> dict[str, Any]:
    data = await json_body(request)
    if not isinstance(data, dict):
        raise Problem(400, "the body must be a JSON object")
    return data


def client_of(request: Request) -> str:
    return request.client.host if request.client else "-"


# --------------------------------------------------------------------------- writes


async def change(request: Request, state: AdminState, who: Identity, action: str,
                 edit: Callable[[dict[str, Any]], dict[str, Any]], status: int = 200,
                 new_route_id: Callable[[dict[str, Any]], str | None] | None = None) -> Response:
    """Validate, compile and swap, then write back atomically and keep the version; else touch nothing."""
    if_match = request.headers.get("if-match")
    if not if_match:
        raise Problem(428, "If-Match is required: send the ETag of GET /admin/config")
    store = state.need_store()
    async with state.lock:
        raw, current = state.read()
        etag = etag_of(raw)
        if if_match.strip() != etag:
            raise Problem(412, "the config changed since you read it (ETag mismatch): read it again",
                          headers={"etag": etag})
        new = restore_secrets(edit(copy.deepcopy(current)), current)
        if new.get("admin") != current.get("admin"):
            raise Problem(422, "the admin block is changed in the config file only, never through the API",
                          problems=["admin: changed in the file only (restart to apply)"])
        try:
            config = parse_config(new)
        except ConfigError as exc:
            raise Problem(422, "the change does not validate", problems=[redact(p) for p in exc.problems]) from None
        old_config = state.control.config
        try:
            state.control.check(config)
            state.control.activate(config)
        except ConfigError as exc:
            raise Problem(422, "the change does not compile", problems=[redact(p) for p in exc.problems]) from None
        except Exception as exc:
            raise Problem(422, "the change does not compile",
                          problems=[redact(f"{exc.__class__.__name__}: {exc}")]) from None
        summary = summarize(current, new)
        try:
            store.ensure_initial(raw, current)
        except OSError as exc:  # the history is a convenience: it never blocks a change
            log_event("admin_history_not_kept", logging.WARNING, path=str(store.history_dir), error=str(exc))
        try:
            data = store.write(new)
        except OSError as exc:
            state.control.revert(old_config)
            log_event("admin_write_failed", logging.ERROR, path=str(store.path), error=str(exc))
            raise Problem(500, f"the config file could not be written ({exc.strerror}); the previous config stays live") from None
        state.control.written(hashlib.sha256(data).digest())
        try:
            version: int | None = store.record(new, who.name, {"action": action, **summary}, data)
        except OSError as exc:
            version = None
            log_event("admin_history_not_kept", logging.WARNING, path=str(store.history_dir), error=str(exc))
        state.last_change = {"time": time.time(), "actor": who.name, "result": "applied", "version": version}
        log_event("audit", actor=who.name, role=who.role, action=action, version=version, etag=etag_of(data), **summary)
    result = {"etag": etag_of(data), "version": version, "summary": summary}
    if new_route_id is not None:
        result["route_id"] = new_route_id(new)
    return json_response(result, status, etag=etag_of(data))


# --------------------------------------------------------------------------- handlers


def build_operations(state: AdminState) -> list[Operation]:
    control = state.control

    async def get_status(request: Request, who: Identity) -> Response:
        store = state.store
        return json_response({
            "version": __version__,
            "uptime_seconds": round(time.time() - control.started_at, 3),
            "mode": control.mode,
            "workers": control.workers,
            "routes": len(control.config.routers),
            "config_source": state.config_path,
            "config_digest": store.etag().strip('"') if store else "",
            "reloads": reload_counts(),
            "last_reload": control.last_reload,
            "last_change": state.last_change,
        })

    async def whoami(request: Request, who: Identity) -> Response:
        return json_response({"name": who.name, "role": who.role})

    async def get_config(request: Request, who: Identity) -> Response:
        raw, document = state.read()
        return json_response(redacted(document), etag=etag_of(raw))

    async def put_config(request: Request, who: Identity) -> Response:
        body = await json_object(request)
        return await change(request, state, who, "put_config", lambda current: body)

    async def validate_config(request: Request, who: Identity) -> Response:
        body = await json_object(request)
        current = state.read()[1] if state.store else {}
        try:
            parse_config(restore_secrets(body, current))
        except ConfigError as exc:
            return json_response({"valid": False, "problems": [redact(p) for p in exc.problems]})
        return json_response({"valid": True, "problems": []})

    async def get_history(request: Request, who: Identity) -> Response:
        return json_response(state.need_store().entries())

    def history_entry(request: Request) -> dict[str, Any]:
        try:
            version = int(request.path_params["version"])
        except ValueError:
            raise Problem(404, "versions are numbers") from None
        entry = state.need_store().entry(version)
        if entry is None:
            raise Problem(404, f"no version {version} in the history")
        return entry

    async def get_history_version(request: Request, who: Identity) -> Response:
        entry = history_entry(request)
        entry["document"] = redacted(entry["document"])
        return json_response(entry)

    async def rollback(request: Request, who: Identity) -> Response:
        entry = history_entry(request)
        return await change(request, state, who, f"rollback to version {entry['version']}",
                            lambda current: entry["document"])

    async def list_routes(request: Request, who: Identity) -> Response:
        raw, document = state.read()
        routes = [{"id": route_id(r), "index": i, "router": redacted(r)}
                  for i, r in enumerate(document.get("routers", [])) if isinstance(r, dict)]
        return json_response(routes, etag=etag_of(raw))

    def route_index(document: dict[str, Any], rid: str) -> int:
        i = find_route(document, rid)
        if i is None:
            raise Problem(404, f"no route with id '{rid}'")
        return i

    async def get_route(request: Request, who: Identity) -> Response:
        raw, document = state.read()
        rid = request.path_params["id"]
        i = route_index(document, rid)
        return json_response({"id": rid, "index": i, "router": redacted(document["routers"][i])}, etag=etag_of(raw))

    async def add_route(request: Request, who: Identity) -> Response:
        body = await json_object(request)

        def edit(current: dict[str, Any]) -> dict[str, Any]:
            current.setdefault("routers", []).append(body)
            return current

        return await change(request, state, who, "add_route", edit, 201, lambda new: route_id(new["routers"][-1]))

    def route_edit(request: Request, make: Callable[[dict[str, Any]], dict[str, Any] | None]):
        """An edit replacing (or, when `make` returns None, removing) the route of the path's id,
        and a function telling the replaced route's id afterwards (a new path or methods give a new one)."""
        rid = request.path_params["id"]
        replaced: list[dict[str, Any]] = []

        def edit(current: dict[str, Any]) -> dict[str, Any]:
            i = route_index(current, rid)
            replacement = make(current["routers"][i])
            if replacement is None:
                del current["routers"][i]
            else:
                current["routers"][i] = replacement
                replaced.append(replacement)
            return current

        def new_id(new: dict[str, Any]) -> str | None:
            return route_id(replaced[0]) if replaced else None

        return edit, new_id

    async def put_route(request: Request, who: Identity) -> Response:
        body = await json_object(request)
        edit, new_id = route_edit(request, lambda old: body)
        return await change(request, state, who, "put_route", edit, new_route_id=new_id)

    async def patch_route(request: Request, who: Identity) -> Response:
        body = await json_object(request)
        edit, new_id = route_edit(request, lambda old: merge_patch(old, body))
        return await change(request, state, who, "patch_route", edit, new_route_id=new_id)

    async def delete_route(request: Request, who: Identity) -> Response:
        edit, _ = route_edit(request, lambda old: None)
        return await change(request, state, who, "delete_route", edit)

    async def get_clusters(request: Request, who: Identity) -> Response:
        return json_response(control.clusters())

    def find_backend(spec: str) -> str:
        rows = control.clusters()
        for row in rows:
            if spec == row["address"] or spec == row["address"].partition("://")[2]:
                return row["address"]
        raise Problem(404, f"no backend '{spec}' (give its address, e.g. http://10.0.0.5:8080 or 10.0.0.5:8080)")

    async def drain_op(request: Request, who: Identity, on: bool) -> Response:
        address = find_backend(request.path_params["backend"])
        control.drain(address, on)
        log_event("audit", actor=who.name, role=who.role, action="drain" if on else "undrain", backend=address)
        row = next(r for r in control.clusters() if r["address"] == address)
        return json_response(row)

    async def drain(request: Request, who: Identity) -> Response:
        return await drain_op(request, who, True)

    async def undrain(request: Request, who: Identity) -> Response:
        return await drain_op(request, who, False)

    async def get_stats(request: Request, who: Identity) -> Response:
        return json_response(state.sampler.snapshot())

    async def stats_stream(request: Request, who: Identity) -> Response:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def events():
            state.sampler.listeners.add(queue)
            try:
                yield b"retry: 2000\n\n" + b"event: stats\ndata: " + orjson.dumps(state.sampler.snapshot()) + b"\n\n"
                while True:
                    item = await queue.get()
                    yield b"event: stats\ndata: " + orjson.dumps(item) + b"\n\n"
            finally:
                state.sampler.listeners.discard(queue)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def purge_cache(request: Request, who: Identity) -> Response:
        route = request.query_params.get("route")
        prefix = request.query_params.get("prefix")
        path = None
        if route is not None:
            for rid, external, _ in state.route_keys():
                if route in (rid, external):
                    path = external
                    break
            else:
                raise Problem(404, f"no route '{route}' (give its id or its external_path)")
        if prefix is not None and not prefix.startswith("/"):
            raise Problem(400, "prefix is a request path prefix and starts with '/'")
        try:
            result = await control.purge_cache(path, prefix)
        except Exception as exc:  # a Redis store down: say so, precisely and without its password
            raise Problem(502, "cache purge failed: " + redact(f"{exc.__class__.__name__}: {exc}")) from None
        log_event("audit", actor=who.name, role=who.role, action="purge_cache", route=path, prefix=prefix,
                  removed=result["removed"])
        return json_response(result)

    async def match(request: Request, who: Identity) -> Response:
        body = await json_object(request)
        try:
            req = schemas.MatchRequest.model_validate(body)
        except ValueError as exc:
            raise Problem(400, "give {\"method\": \"GET\", \"url\": \"/path?query\"}: " + str(exc).splitlines()[0]) from None
        return json_response(match_request(control.config, req.method, req.url))

    async def get_openapi(request: Request, who: Identity) -> Response:
        return json_response(schemas.openapi(operations))

    S = schemas
    router_ref = {"$ref": "#/components/schemas/RouterConfig"}
    config_ref = {"$ref": "#/components/schemas/GatewayConfig"}
    operations = [
        Operation("GET", "/admin/status", get_status, "version, uptime, workers, config digest, reloads", S.Status),
        Operation("GET", "/admin/whoami", whoami, "the token's name and role", S.Whoami),
        Operation("GET", "/admin/openapi.json", get_openapi, "this document", extra={"schema": {"type": "object"}}),
        Operation("GET", "/admin/config", get_config, "the config file, secrets redacted; ETag header",
                  extra={"schema": {"type": "object", "description": "the config document (GatewayConfig's shape) "
                                    "with every secret replaced by \"***\""}}),
        Operation("PUT", "/admin/config", put_config, "replace the whole config", S.ChangeResult, write=True,
                  if_match=True, statuses=(400, 404), extra={"body_ref": config_ref}),
        Operation("POST", "/admin/config/validate", validate_config, "dry run: the problem list of `kairos validate`",
                  S.ValidationResult, statuses=(400,), extra={"body_ref": config_ref}),
        Operation("GET", "/admin/config/history", get_history, "versions kept (newest first)", S.HistoryEntry,
                  response_list=True),
        Operation("GET", "/admin/config/history/{version}", get_history_version, "one version, secrets redacted",
                  S.HistoryDocument, statuses=(404,)),
        Operation("POST", "/admin/config/rollback/{version}", rollback, "make a kept version live again",
                  S.ChangeResult, write=True, if_match=True, statuses=(404,)),
        Operation("GET", "/admin/routes", list_routes, "every route with its id", S.RouteView, response_list=True),
        Operation("POST", "/admin/routes", add_route, "add a route", S.ChangeResult, write=True, if_match=True,
                  statuses=(400,), extra={"body_ref": router_ref}),
        Operation("GET", "/admin/routes/{id}", get_route, "one route", S.RouteView, statuses=(404,)),
        Operation("PUT", "/admin/routes/{id}", put_route, "replace a route", S.ChangeResult, write=True,
                  if_match=True, statuses=(400, 404), extra={"body_ref": router_ref}),
        Operation("PATCH", "/admin/routes/{id}", patch_route, "change a route (JSON merge patch, RFC 7396)",
                  S.ChangeResult, write=True, if_match=True, statuses=(400, 404), extra={"body_ref": {"type": "object"}}),
        Operation("DELETE", "/admin/routes/{id}", delete_route, "remove a route", S.ChangeResult, write=True,
                  if_match=True, statuses=(404,)),
        Operation("GET", "/admin/clusters", get_clusters, "every backend: health, breaker, ejection, in-flight, weights",
                  S.BackendState, response_list=True),
        Operation("POST", "/admin/clusters/{backend:path}/drain", drain, "no new requests; in-flight ones finish",
                  S.BackendState, write=True, statuses=(404,)),
        Operation("POST", "/admin/clusters/{backend:path}/undrain", undrain, "back in rotation",
                  S.BackendState, write=True, statuses=(404,)),
        Operation("GET", "/admin/stats", get_stats, "per route: requests/s, error rate, p50/p95/p99 over 1 and 5 min",
                  S.Stats),
        Operation("GET", "/admin/stats/stream", stats_stream, "the same as server-sent events, every second",
                  content_type="text/event-stream", extra={"schema": {"type": "string"}}),
        Operation("DELETE", "/admin/cache", purge_cache, "remove cached responses: all, ?route= (id or external_path), ?prefix=",
                  S.PurgeResult, write=True, statuses=(400, 404, 502),
                  extra={"query": [{"name": "route", "in": "query", "required": False, "schema": {"type": "string"}},
                                   {"name": "prefix", "in": "query", "required": False,
                                    "schema": {"type": "string", "pattern": "^/"}}]}),
        Operation("POST", "/admin/match", match, "method + URL -> route, backends, policies", S.MatchResult,
                  statuses=(400,), body=S.MatchRequest),
    ]
    return operations


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge recursively, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# --------------------------------------------------------------------------- the app


def guarded(state: AdminState, op: Operation):
    async def endpoint(request: Request) -> Response:
        client = client_of(request)
        who: Identity | None = None
        try:
            wait = state.throttle.retry_after(client)
            if wait > 0:
                raise Problem(429, "too many failed authentications: wait before trying again",
                              headers={"retry-after": str(int(wait) + 1)})
            token = bearer_token(request.headers)
            if token is None:
                raise Problem(401, "send 'Authorization: Bearer <token>'")
            who = state.current_tokens().identify(token)
            if who is None:
                state.throttle.failed(client)
                raise Problem(401, "unknown token")
            state.throttle.succeeded(client)
            if op.write and not who.can_write:
                raise Problem(403, f"token '{who.name}' has the viewer role: it may read, not change")
            response = await op.handler(request, who)
        except Problem as exc:
            response = error_response(request, exc)
        log_event("admin", actor=who.name if who else None, role=who.role if who else None,
                  method=request.method, path=request.url.path, status=response.status_code, client=client,
                  request_id=request.scope.get("kairos.request_id", ""))
        return response

    endpoint.__name__ = op.handler.__name__
    return endpoint


class AdminHeaders:
    """Strict CSP and friends on every admin response; unknown paths get the JSON 404."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_admin_app(state: AdminState) -> Starlette:
    operations = build_operations(state)
    routes: list[Any] = [Route(op.path, guarded(state, op), methods=[op.method]) for op in operations]
    routes.append(Route("/admin/ui", lambda request: RedirectResponse("/admin/ui/", 308)))
    routes.append(Route("/", lambda request: RedirectResponse("/admin/ui/", 302)))
    routes.append(Mount("/admin/ui", StaticFiles(directory=str(UI_DIR), html=True), name="ui"))

    async def not_found(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 404)
        return error_response(request, Problem(code if code in STATUS_KIND else 404,
                                               getattr(exc, "detail", None) or "not found"))

    async def internal(request: Request, exc: Exception) -> Response:
        log_event("internal_error", logging.ERROR, request_id=request.scope.get("kairos.request_id", ""),
                  error=redact(f"{exc.__class__.__name__}: {exc}"), where="admin")
        return error_response(request, Problem(500, "internal admin error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        state.sampler.start()
        try:
            yield
        finally:
            await state.sampler.stop()

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, Exception: internal},
                    lifespan=lifespan)
    app.router.redirect_slashes = False
    app.state.admin = state
    app.state.operations = operations
    return RequestID(AdminHeaders(app))  # type: ignore[return-value]

