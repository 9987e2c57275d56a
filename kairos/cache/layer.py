"""The response cache layer: a shared HTTP cache (RFC 9111) in front of a route's upstream.

The rules come from hishel 2's state machine, driven here per request:
`IdleClient.next(request, entries)` gives `FromCache` (answer from the entry),
`NeedRevalidation` (ask the upstream with the entry's validators) or `CacheMiss`;
the upstream's answer goes to `.next(response)`, which says `StoreAndUse`,
`CouldNotBeStored`, `NeedToBeUpdated` (a 304 refreshed the entry) or
`InvalidateEntries`. hishel knows nothing of streaming, coalescing or stale
content; this layer adds them:

* streaming: a miss is relayed chunk by chunk while it is recorded; past
  `max_size` the recording is dropped, the client still gets everything;
* coalescing: concurrent misses of one key wait for the first one (in process;
  with Redis also across instances through a short lock), then read the cache;
  a waiter that times out goes upstream itself;
* stale-while-revalidate (one background refresh per key) and stale-if-error
  (upstream error, timeout, open breaker or a 5xx), from the response's
  directives or the config;
* a client's `If-None-Match` / `If-Modified-Since` answered 304 from a fresh entry;
* `Age` and `X-Cache: HIT | MISS | STALE | REVALIDATED | BYPASS` on every answer;
* `ttl_secs` as the freshness of a response that states none (hishel's
  heuristic freshness is never reached), `Set-Cookie` never stored, requests with
  `no-store` never stored, the Authorization rule on reads as well as writes.

The layer sits inside the compression layer: it stores what the upstream sent,
and hits are compressed per client like misses.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import unquote_plus

from hishel import (
    CacheMiss,
    CacheOptions,
    Entry,
    FromCache,
    Headers,
    IdleClient,
    InvalidateEntries,
    NeedRevalidation,
    NeedToBeUpdated,
    Request,
    Response,
    StoreAndUse,
)
from hishel._core._headers import parse_cache_control
from hishel._core._spec import get_age, get_freshness_lifetime, refresh_response_headers, vary_headers_match

from kairos.cache.storage import StoredEntry, StoreUnavailable
from kairos.config.cache import CacheConfig
from kairos.errors import GatewayError
from kairos.middleware.compression import CACHED_BODY
from kairos.observability import metrics
from kairos.observability.logging import log_event
from kairos.proxy.exchange import EXCHANGE, exchange_of
from kairos.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from kairos.cache.storage import MemoryStore, RedisStore

    Store = MemoryStore | RedisStore

OPTIONS = CacheOptions(shared=True, supported_methods=["GET", "HEAD"], allow_stale=False)
UNSAFE = frozenset(("POST", "PUT", "PATCH", "DELETE"))
ERROR_STATUSES = frozenset((500, 502, 503, 504))
# Never stored, never served from a stored entry: ours to set per answer.
_OWN = frozenset((b"age", b"x-cache"))
# A 304 to a client carries these of the stored response (RFC 9110 15.4.5).
_NOT_MODIFIED_KEEP = frozenset((b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary",
                                b"last-modified"))
_CONDITIONAL = frozenset((b"if-none-match", b"if-modified-since"))
RESULTS = ("hit", "miss", "stale", "revalidated", "bypass")
_X = {r: r.upper().encode() for r in RESULTS}


def _lists(headers: list[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers:
        out.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return out


def _raw(headers: Headers) -> list[tuple[bytes, bytes]]:
    out = []
    for name in headers:
        for value in headers.get_list(name) or ():
            out.append((name.encode("latin-1"), value.encode("latin-1")))
    return out


def _etag_matches(if_none_match: str, etag: str | None) -> bool:
    """Weak comparison (RFC 9110 13.1.2): W/"a" and "a" match."""
    if etag is None:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = etag.strip().removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in if_none_match.split(","))


class CachePolicy:
    """A route's compiled `cache` block."""

    __slots__ = ("route", "ttl", "max_size", "swr", "sie", "header_parts", "query_ignore", "cache_authenticated",
                 "coalesce_s", "requests")

    def __init__(self, route: str, config: CacheConfig) -> None:
        self.route = route
        self.ttl = config.ttl_secs
        self.max_size = config.max_size
        self.swr = config.stale_while_revalidate_secs
        self.sie = config.stale_if_error_secs
        self.header_parts = tuple(part.split(":", 1)[1].encode("latin-1") for part in config.key.extra)
        self.query_ignore = tuple(config.key.query_ignore)
        self.cache_authenticated = config.cache_authenticated
        self.coalesce_s = config.coalesce_timeout_ms / 1000
        self.requests = {r: metrics.CACHE_REQUESTS.labels(route, r) for r in RESULTS}

    def url(self, scope: Scope) -> str:
        path = scope.get("raw_path") or scope["path"].encode()
        qs: bytes = scope.get("query_string") or b""
        if qs and self.query_ignore:
            kept = [p for p in qs.split(b"&") if not self._ignored(p.split(b"=", 1)[0])]
            qs = b"&".join(kept)
        return (path + b"?" + qs).decode("latin-1") if qs else path.decode("latin-1")

    def _ignored(self, name: bytes) -> bool:
        text = unquote_plus(name.decode("latin-1"))
        for pattern in self.query_ignore:
            if text == pattern or (pattern.endswith("*") and text.startswith(pattern[:-1])):
                return True
        return False


class Cache:
    """The cache in a route's chain (module docstring)."""

    def __init__(self, app: ASGIApp, policy: CachePolicy, store: Store, inflight: dict[str, asyncio.Event],
                 refreshing: set[str]) -> None:
        self.app = app
        self.policy = policy
        self.store = store
        # Shared by every route using this store in this process (keys carry the route).
        self.inflight = inflight
        self.refreshing = refreshing
        self.tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ entry
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method == "GET" or method == "HEAD":
            await self._lookup(scope, receive, send, coalesced=False)
        elif method in UNSAFE:
            await self._unsafe(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _request(self, scope: Scope) -> tuple[str, str, dict[str, list[str]], bool] | None:
        """(base key, extras, request headers, authorized) or None when the request bypasses the cache."""
        policy = self.policy
        hmap = _lists(scope["headers"])
        if "range" in hmap:
            return None
        cc = hmap.get("cache-control")
        if cc and parse_cache_control(", ".join(cc)).no_store:
            return None
        url = policy.url(scope)
        extras = []
        for name in policy.header_parts:
            extras.append(", ".join(hmap.get(name.decode("latin-1"), ())))
        authorized = "authorization" in hmap
        if authorized and policy.cache_authenticated:
            user = scope.get("kairos.user")
            if isinstance(user, dict) and user.get("sub") is not None:
                # Keyed by the verified identity: the entry is this user's, like a private cache's.
                extras.append("user:" + str(user.get("iss", "")) + "|" + str(user["sub"]))
                del hmap["authorization"]
                authorized = False
        return policy.route + " " + url, "\x1f".join(extras), hmap, authorized

    def _view(self, entry: StoredEntry) -> Entry:
        """The entry as hishel sees it: `ttl_secs` as the freshness when the response states none,
        and the date hishel computes the age from set to when the entry was born."""
        view = entry.view
        if view is not None:
            return view
        headers = _lists(entry.headers)
        cc = parse_cache_control(", ".join(headers.get("cache-control", ())))
        if cc.max_age is None and cc.s_maxage is None and "expires" not in headers:
            headers.setdefault("cache-control", []).append(f"s-maxage={self.policy.ttl}")
        # The age counts from when this cache received the response (less any Age it already
        # had: stored_at is set back by it), by this gateway's clock: an upstream's skewed Date
        # must not age entries.
        born = entry.stored_at
        headers["date"] = [email.utils.formatdate(born, usegmt=True)]
        view = Entry(uuid.UUID(entry.id), Request("GET", entry.base.partition(" ")[2], Headers(entry.request_headers)),
                     Response(entry.status, Headers(headers)))
        entry.view = view
        # What hishel's IdleClient would compute for this entry on every request, computed once:
        # (born, fresh until, no-cache, Vary names or None for Vary: *).
        lifetime = get_freshness_lifetime(view.response, True) or 0
        vary_names: tuple[str, ...] | None = tuple(
            v.strip().lower() for v in ",".join(headers.get("vary", ())).split(",") if v.strip())
        if vary_names is not None and "*" in vary_names:
            vary_names = None
        entry.meta = (born, born + lifetime, bool(cc.no_cache), vary_names)  # the s-maxage added does not change no-cache
        return view

    def _fresh_hit(self, entries: list[StoredEntry], hmap: dict[str, list[str]]) -> StoredEntry | None:
        """The newest fresh entry matching the request's Vary, for a request without Cache-Control:
        the FromCache decision of hishel's IdleClient, from figures it computed once per entry
        (a hit then costs a few comparisons instead of re-parsing the entry's headers)."""
        now = time.time()
        best = None
        for entry in entries:
            if entry.view is None:
                self._view(entry)
            born, fresh_until, no_cache, vary_names = entry.meta
            if no_cache or vary_names is None or now >= fresh_until:
                continue
            if any(hmap.get(name) != entry.request_headers.get(name) for name in vary_names):
                continue
            if best is None or born > best.meta[0]:
                best = entry
        return best

    async def _lookup(self, scope: Scope, receive: Receive, send: Send, coalesced: bool) -> None:
        req = self._request(scope)
        if req is None:
            await self._bypass(scope, receive, send)
            return
        base, extras, hmap, authorized = req
        try:
            entries = await self.store.get(base)
        except StoreUnavailable:
            await self._bypass(scope, receive, send)
            return
        entries = [e for e in entries if e.extras == extras]
        if authorized:  # RFC 9111 3.5: only entries whose response allows shared reuse for authorized requests
            entries = [e for e in entries if _allows_authorized(e)]
        if not entries:
            if scope["method"] == "HEAD":
                await self._forward(scope, receive, send, "miss")
            else:
                state: Any = CacheMiss(request=Request("GET", base.partition(" ")[2], Headers(hmap)), options=OPTIONS)
                await self._miss(scope, receive, send, state, base, extras, entries, coalesced)
            return
        if "cache-control" not in hmap and "pragma" not in hmap:
            hit = self._fresh_hit(entries, hmap)
            if hit is not None:
                await self._serve(scope, send, hit, str(int(time.time() - hit.meta[0])), "hit")
                return
        hreq = Request("GET", base.partition(" ")[2], Headers(hmap))
        # Only variants whose Vary matches are candidates, for reuse and for revalidation alike:
        # a 304 for another variant's validator must not hand this client that variant (Kong #12796).
        views = [v for v in map(self._view, entries) if vary_headers_match(hreq, v)]
        by_id = {e.id: e for e in entries}
        state = IdleClient(options=OPTIONS).next(hreq, views)
        if isinstance(state, FromCache):
            entry = by_id[state.entry.id.hex]
            await self._serve(scope, send, entry, state.entry.response.headers.get("age", "0"), "hit")
            return
        if scope["method"] == "HEAD":  # a HEAD that is not a hit goes upstream untouched
            await self._forward(scope, receive, send, "miss")
            return
        if isinstance(state, NeedRevalidation):
            entry = by_id[state.revalidating_entries[0].id.hex]
            view = self._view(entry)
            swr, sie = self._stale_windows(entry, view, hreq)
            if swr:
                await self._serve(scope, send, entry, str(get_age(view.response)), "stale")
                self._refresh_in_background(scope, base, extras, state, entries)
                return
            await self._revalidate(scope, receive, send, state, entry, base, extras, entries, sie)
            return
        assert isinstance(state, CacheMiss)
        await self._miss(scope, receive, send, state, base, extras, entries, coalesced)

    # ------------------------------------------------------------------ answers
    async def _serve(self, scope: Scope, send: Send, entry: StoredEntry, age: str, result: str) -> None:
        self.policy.requests[result].inc()
        # Stored headers never hold Age or X-Cache (dropped when recorded and when refreshed).
        headers = [*entry.headers, (b"age", age.encode()), (b"x-cache", _X[result])]
        if entry.status == 200 and self._not_modified(scope, entry):
            headers = [h for h in headers if h[0] in _NOT_MODIFIED_KEEP or h[0] in _OWN]
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if not any(n == b"content-length" for n, _ in headers):
            headers.append((b"content-length", str(len(entry.body)).encode()))
        scope[CACHED_BODY] = (entry.id, entry.stored_at)  # compression keeps its encodings of it
        await send({"type": "http.response.start", "status": entry.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else entry.body})

    @staticmethod
    def _not_modified(scope: Scope, entry: StoredEntry) -> bool:
        inm = ims = None
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                inm = value.decode("latin-1") if inm is None else inm + "," + value.decode("latin-1")
            elif name == b"if-modified-since":
                ims = value.decode("latin-1")
        if inm is None and ims is None:
            return False
        stored = {n: v.decode("latin-1") for n, v in entry.headers if n in (b"etag", b"last-modified")}
        if inm is not None:  # If-Modified-Since is ignored when If-None-Match is present
            return _etag_matches(inm, stored.get(b"etag"))
        last = stored.get(b"last-modified")
        if last is None or ims is None:
            return False
        try:
            return email.utils.parsedate_to_datetime(last) <= email.utils.parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False

    async def _bypass(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._forward(scope, receive, send, "bypass")

    async def _forward(self, scope: Scope, receive: Receive, send: Send, result: str) -> None:
        """Straight to the upstream, only marking the answer."""
        self.policy.requests[result].inc()
        mark = (b"x-cache", _X[result])

        async def send_marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), mark]
            await send(message)

        await self.app(scope, receive, send_marked)

    # ------------------------------------------------------------------ stale content
    def _stale_windows(self, entry: StoredEntry, view: Entry, hreq: Request) -> tuple[bool, bool]:
        """(may serve stale while revalidating now, may serve stale if the upstream fails)."""
        cc = parse_cache_control(view.response.headers.get("cache-control"))
        if cc.must_revalidate or cc.proxy_revalidate or cc.no_cache:
            return False, False
        if parse_cache_control(hreq.headers.get("cache-control")).no_cache or not vary_headers_match(hreq, view):
            return False, False
        lifetime = get_freshness_lifetime(view.response, True)
        if lifetime is None:
            return False, False
        staleness = get_age(view.response) - lifetime
        swr = cc.stale_while_revalidate if cc.stale_while_revalidate is not None else self.policy.swr
        sie = cc.stale_if_error if cc.stale_if_error is not None else self.policy.sie
        return staleness < swr, staleness < sie

    def _refresh_in_background(self, scope: Scope, base: str, extras: str, state: NeedRevalidation,
                               entries: list[StoredEntry]) -> None:
        name = base + "\x1f" + extras
        if name in self.refreshing:
            return
        self.refreshing.add(name)
        bg_scope = dict(scope)
        bg_scope["headers"] = _conditional_headers(scope["headers"], state)
        bg_scope.pop(EXCHANGE, None)  # not this request's exchange: nothing of it reaches the client

        async def refresh() -> None:
            try:
                if not await self.store.lock(name + "\x1frefresh", 10_000):
                    return  # another instance refreshes it
                try:
                    await self._exchange_revalidation(bg_scope, _idle_receive(), None, state, base, extras, entries)
                finally:
                    await self.store.unlock(name + "\x1frefresh")
            except (GatewayError, StoreUnavailable) as exc:
                log_event("cache_refresh_failed", logging.WARNING, route=self.policy.route,
                          request_id=scope.get("kairos.request_id", ""), error=str(exc)[:300])
            except Exception as exc:  # a background task must not die silently
                log_event("cache_refresh_failed", logging.ERROR, route=self.policy.route,
                          request_id=scope.get("kairos.request_id", ""), error=f"{type(exc).__name__}: {exc}"[:300])
            finally:
                self.refreshing.discard(name)

        task = asyncio.ensure_future(refresh())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ upstream exchanges
    async def _revalidate(self, scope: Scope, receive: Receive, send: Send, state: NeedRevalidation,
                          entry: StoredEntry, base: str, extras: str, entries: list[StoredEntry], sie: bool) -> None:
        up_scope = dict(scope)
        up_scope["headers"] = _conditional_headers(scope["headers"], state)
        exchange = scope.get(EXCHANGE)
        mark = len(exchange.hooks) if exchange is not None else 0
        try:
            outcome = await self._exchange_revalidation(up_scope, receive, send, state, base, extras, entries, sie)
        except GatewayError:
            if not sie:
                raise
            if exchange is not None:  # we answer instead: the failed attempt's hooks are not ours
                exchange.drop_hooks_after(mark)
            outcome = "error"
        if outcome == "error":  # the upstream failed and the entry may be served stale for it
            await self._serve(scope, send, entry, str(get_age(self._view(entry).response)), "stale")
        elif isinstance(outcome, StoredEntry):
            await self._serve(scope, send, outcome, "0", "revalidated")
        elif outcome == "retry":  # a 304 that matched nothing stored: ask again, plainly
            await self._miss(scope, receive, send, CacheMiss(request=state.original_request, options=OPTIONS),
                             base, extras, entries, coalesced=True)

    async def _exchange_revalidation(self, up_scope: Scope, receive: Receive, send: Send | None,
                                     state: NeedRevalidation, base: str, extras: str, entries: list[StoredEntry],
                                     sie: bool = False) -> Any:
        """Send the conditional request. Returns a refreshed StoredEntry (304), "error" (a 5xx
        swallowed for stale-if-error), "retry" (a 304 matching nothing), or None when the new
        response was relayed (and stored when allowed)."""
        by_id = {e.id: e for e in entries}
        decision: dict[str, Any] = {}

        def decide(status: int, headers: list[tuple[bytes, bytes]]) -> tuple[bool, StoredEntry | None]:
            if status == 304:
                decision["kind"] = "304"
                decision["response"] = Response(304, Headers(_lists(headers)))
                return False, None
            if sie and status in ERROR_STATUSES:
                decision["kind"] = "error"
                return False, None
            decision["kind"] = "new"
            nxt = state.next(Response(status, Headers(_lists(headers))))
            return send is not None, self._recording(nxt, up_scope, status, headers, base, extras, decision)

        recording = _Recording(send, decide, self.policy.max_size, b"MISS")
        await self.app(up_scope, receive, recording.send)
        kind = decision.get("kind")
        if kind == "error":
            return "error"
        if kind == "304":
            nxt = state.next(decision["response"])
            stale_ids: list[str] = []
            while isinstance(nxt, InvalidateEntries):
                stale_ids += [i.hex for i in nxt.entry_ids]
                nxt = nxt.next()
            if not isinstance(nxt, NeedToBeUpdated):
                return "retry"
            refreshed = None
            now = time.time()
            for updating in nxt.updating_entries:
                old = by_id.get(updating.id.hex)
                if old is None:
                    continue
                merged = refresh_response_headers(Response(old.status, Headers(_lists(old.headers))),
                                                  decision["response"], True)
                headers = [h for h in _raw(merged.headers) if h[0] not in _OWN]
                refreshed = old.replacing(headers, now, now + self._keep_s(headers))
                await self.store.put(refreshed)
            if stale_ids:
                await self.store.remove(base, stale_ids)
            self.policy.requests["revalidated"].inc()
            return refreshed if refreshed is not None else "retry"
        self.policy.requests["miss"].inc()
        await self._store_recorded(recording, decision, entries)
        return None

    async def _miss(self, scope: Scope, receive: Receive, send: Send, state: CacheMiss, base: str, extras: str,
                    entries: list[StoredEntry], coalesced: bool) -> None:
        name = base + "\x1f" + extras
        if not coalesced:
            leader = self.inflight.get(name)
            if leader is not None:  # someone in this process is fetching it: wait, then read the cache
                try:
                    async with asyncio.timeout(self.policy.coalesce_s):
                        await leader.wait()
                except TimeoutError:
                    pass
                await self._lookup(scope, receive, send, coalesced=True)
                return
        event = asyncio.Event()
        if not coalesced:
            self.inflight[name] = event
        locked = False
        try:
            if not coalesced and self.store.shared:
                try:
                    locked = await self.store.lock(name, int(self.policy.coalesce_s * 1000))
                except StoreUnavailable:
                    locked = True  # nothing to coalesce through: just go
                if not locked and await self._wait_for_other_instance(scope, send, base, extras):
                    return
            decision: dict[str, Any] = {}

            def decide(status: int, headers: list[tuple[bytes, bytes]]) -> tuple[bool, StoredEntry | None]:
                return True, self._recording(state.next(Response(status, Headers(_lists(headers)))), scope, status,
                                             headers, base, extras, decision)

            self.policy.requests["miss"].inc()
            recording = _Recording(send, decide, self.policy.max_size, b"MISS")
            await self.app(scope, receive, recording.send)
            await self._store_recorded(recording, decision, entries)
        finally:
            if not coalesced:
                event.set()
                if self.inflight.get(name) is event:
                    del self.inflight[name]
            if locked and self.store.shared:
                try:
                    await self.store.unlock(name)
                except StoreUnavailable:
                    pass

    async def _wait_for_other_instance(self, scope: Scope, send: Send, base: str, extras: str) -> bool:
        """Another instance holds the lock for this key: poll for its entry while the lock is held,
        up to the timeout."""
        deadline = time.monotonic() + self.policy.coalesce_s
        req = self._request(scope)
        assert req is not None
        hreq = Request("GET", base.partition(" ")[2], Headers(req[2]))
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            try:
                entries = [e for e in await self.store.get(base) if e.extras == extras]
            except StoreUnavailable:
                return False
            views = [v for v in map(self._view, entries) if vary_headers_match(hreq, v)]
            state = IdleClient(options=OPTIONS).next(hreq, views)
            if isinstance(state, FromCache):
                entry = next(e for e in entries if e.id == state.entry.id.hex)
                await self._serve(scope, send, entry, state.entry.response.headers.get("age", "0"), "hit")
                return True
            try:
                if not await self.store.locked(base + "\x1f" + extras):
                    return False  # the other instance is done and stored nothing usable: ask ourselves
            except StoreUnavailable:
                return False
        return False

    def _recording(self, nxt: Any, scope: Scope, status: int, headers: list[tuple[bytes, bytes]], base: str,
                   extras: str, decision: dict[str, Any]) -> StoredEntry | None:
        """At the response start: a StoredEntry (headers, no body yet) when the response may be stored."""
        invalidate: list[str] = []
        while isinstance(nxt, InvalidateEntries):
            invalidate += [i.hex for i in nxt.entry_ids]
            nxt = nxt.next()
        decision["invalidate"] = invalidate
        if not isinstance(nxt, StoreAndUse):
            return None
        if any(n.lower() == b"set-cookie" for n, _ in headers):
            return None  # one user's cookie must never reach another
        for n, v in headers:
            if n.lower() == b"content-length":
                try:
                    if int(v) > self.policy.max_size:
                        return None
                except ValueError:
                    return None
        stored = [h for h in _raw(nxt.response.headers) if h[0] not in _OWN]
        if not any(n == b"date" for n, _ in stored):
            stored.append((b"date", email.utils.formatdate(usegmt=True).encode()))
        vary_names = [v.strip().lower() for v in nxt.response.headers.get("vary", "").split(",") if v.strip()]
        req_headers = {}
        hmap = _lists(scope["headers"])
        for name in vary_names:
            if name in hmap:
                req_headers[name] = hmap[name]
        age = 0
        for n, v in headers:
            if n.lower() == b"age":
                try:
                    age = max(0, int(v))
                except ValueError:
                    pass
        now = time.time()
        return StoredEntry(base, extras, req_headers, status, stored, b"", now - age, now + self._keep_s(stored))

    def _keep_s(self, headers: list[tuple[bytes, bytes]]) -> float:
        """How long an entry stays useful: its freshness, the stale windows, and for an entry
        with validators some more time to be revalidated instead of fetched again."""
        hmap = _lists(headers)
        cc = parse_cache_control(", ".join(hmap.get("cache-control", ())))
        lifetime = get_freshness_lifetime(Response(200, Headers(hmap)), True)
        if lifetime is None or (cc.max_age is None and cc.s_maxage is None and "expires" not in hmap):
            lifetime = self.policy.ttl
        stale = max(cc.stale_while_revalidate or 0, cc.stale_if_error or 0, self.policy.swr, self.policy.sie)
        validators = "etag" in hmap or "last-modified" in hmap
        return max(1.0, lifetime + stale + (max(self.policy.ttl, 60) if validators else 0))

    async def _store_recorded(self, recording: _Recording, decision: dict[str, Any], entries: list[StoredEntry]) -> None:
        entry = recording.entry
        try:
            if entry is not None and recording.complete and recording.body is not None:
                entry.body = b"".join(recording.body)
                entry.size += len(entry.body)
                replaces = [e.id for e in entries if e.same_variant(entry)] + decision.get("invalidate", [])
                await self.store.put(entry, replaces)
            elif decision.get("invalidate") and entries:
                await self.store.remove(entries[0].base, decision["invalidate"])
        except StoreUnavailable:
            pass  # the store logged it; this response simply is not cached

    async def _unsafe(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST/PUT/PATCH/DELETE: forwarded; a success invalidates what is stored for its URL
        (RFC 9111 4.4, every variant and every key extra)."""
        exchange, send = exchange_of(scope, send)  # it records the status the client got
        await self.app(scope, receive, send)
        if 200 <= exchange.status < 400:
            try:
                await self.store.delete(self.policy.route + " " + self.policy.url(scope))
            except StoreUnavailable:
                pass


def _allows_authorized(entry: StoredEntry) -> bool:
    for name, value in entry.headers:
        if name == b"cache-control":
            cc = parse_cache_control(value.decode("latin-1"))
            if cc.public or cc.s_maxage is not None or cc.must_revalidate:
                return True
    return False


def _conditional_headers(raw: list[tuple[bytes, bytes]], state: NeedRevalidation) -> list[tuple[bytes, bytes]]:
    """The client's headers with the cache's validators in place of the client's own."""
    out = [(n, v) for n, v in raw if n not in _CONDITIONAL]
    for name in ("if-none-match", "if-modified-since"):
        value = state.request.headers.get(name)
        if value:
            out.append((name.encode(), value.encode("latin-1")))
    return out


def _idle_receive() -> Receive:
    """`receive` for a background request: an empty body, then nothing until cancelled."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive


class _Recording:
    """`send` for one upstream exchange: relays to the client (or not), records the body (or not)."""

    __slots__ = ("client_send", "decide", "max_size", "mark", "relay", "entry", "body", "size", "complete")

    def __init__(self, client_send: Send | None, decide: Callable[..., tuple[bool, StoredEntry | None]],
                 max_size: int, mark: bytes) -> None:
        self.client_send = client_send
        self.decide = decide
        self.max_size = max_size
        self.mark = mark
        self.relay = False
        self.entry: StoredEntry | None = None
        self.body: list[bytes] | None = None
        self.size = 0
        self.complete = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = list(message.get("headers") or ())
            self.relay, self.entry = self.decide(message["status"], headers)
            if self.entry is not None:
                self.body = []
            if self.relay and self.client_send is not None:
                message["headers"] = [*headers, (b"x-cache", self.mark)]
                await self.client_send(message)
            return
        if kind == "http.response.body":
            chunk = message.get("body", b"")
            if self.body is not None and chunk:
                self.size += len(chunk)
                if self.size > self.max_size:
                    self.body = None  # too big to keep; the client still gets every byte
                else:
                    self.body.append(chunk)
            if not message.get("more_body", False):
                self.complete = True
        if self.relay and self.client_send is not None:
            await self.client_send(message)


def cache_policy(route: str, config: CacheConfig | None) -> CachePolicy | None:
    """The compiled policy, or None when the route does not cache (it then pays nothing)."""
    if config is None or not config.enabled:
        return None
    return CachePolicy(route, config)
