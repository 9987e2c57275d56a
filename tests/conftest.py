"""Shared fixtures: real upstreams, a real gateway subprocess, redis, clients.

Fixtures (see each docstring):
    upstream                      one started Upstream("upstream")
    make_upstream / upstreams     factory: make_upstream() -> Upstream, make_upstream(3) -> [Upstream]*3
    gateway                       factory: gateway(config, env=None, workers=1, extra_args=()) -> Gateway
    kairos_cli                    run `python -m kairos ARGS...` to completion -> CompletedProcess
    redis_server                  session-scoped RedisServer (a str: its URL) with .stop()/.start()/.flush()
    redis_clean                   function-scoped: redis_server, guaranteed running and flushed
    client / sync_client          httpx.AsyncClient / httpx.Client (timeout=10, trust_env=False)
    compat_dir                    ../shared/compat (skips when absent)
Helpers: free_port(), shared_compat_dir(), REPO_ROOT.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from upstream import Upstream  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- helpers
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shared_compat_dir() -> Path | None:
    """<repo root>/../shared/compat (kairos-rs's real configs), or None if absent."""
    p = REPO_ROOT.parent / "shared" / "compat"
    return p if p.is_dir() else None


def _hermetic_env(env: dict[str, str] | None) -> dict[str, str]:
    """os.environ without KAIROS_* (so the outer shell never leaks into a test), plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("KAIROS_")}
    base["PYTHONUNBUFFERED"] = "1"
    base["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([base["PYTHONPATH"]] if base.get("PYTHONPATH") else [])
    )
    if env:
        base.update({k: str(v) for k, v in env.items()})
    return base


def _write_json_atomic(path: Path, data: Any) -> None:
    text = data if isinstance(data, str) else json.dumps(data, indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------- upstreams
@pytest.fixture
def upstream():
    """One started Upstream named "upstream"; stopped after the test."""
    u = Upstream("upstream").start()
    yield u
    u.stop()


@pytest.fixture
def make_upstream():
    """Factory: make_upstream() -> Upstream; make_upstream(3) -> list of 3; name= for one.

    Names default to up0, up1, ... in creation order. All are stopped at teardown.
    """
    started: list[Upstream] = []

    def factory(n: int | None = None, name: str | None = None, **kw: Any):
        def one(nm: str) -> Upstream:
            u = Upstream(nm, **kw).start()
            started.append(u)
            return u

        if n is None:
            return one(name or f"up{len(started)}")
        return [one(f"{name}{i}" if name else f"up{len(started)}") for i in range(n)]

    yield factory
    for u in started:
        u.stop()


@pytest.fixture
def upstreams(make_upstream):
    """Alias of make_upstream, so tests can write `a, b, c = upstreams(3)`."""
    return make_upstream


# --------------------------------------------------------------------------- gateway
class Gateway:
    """A `python -m kairos serve` subprocess (see the `gateway` fixture)."""

    def __init__(self, config_path: Path, port: int, proc: subprocess.Popen,
                 stdout_path: Path, stderr_path: Path, argv: list[str]):
        self.config_path = config_path
        self.port = port
        self.host = "127.0.0.1"
        self.url = f"http://127.0.0.1:{port}"
        self.proc = proc
        self.argv = argv
        self._stdout_path = stdout_path
        self._stderr_path = stderr_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self) -> str:
        """Everything the gateway wrote to stdout so far (JSON log lines)."""
        return self._stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")

    def log_records(self) -> list[dict]:
        """stdout lines that parse as JSON objects (other lines skipped)."""
        out = []
        for line in self.logs().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def wait_for_log(self, predicate: str | Callable[[dict], bool], timeout: float = 10.0) -> dict | str:
        """Wait until a log line contains `predicate` (str) or a JSON record satisfies it."""
        deadline = time.monotonic() + timeout
        while True:
            if isinstance(predicate, str):
                for line in self.logs().splitlines():
                    if predicate in line:
                        return line
            else:
                for rec in self.log_records():
                    if predicate(rec):
                        return rec
            if time.monotonic() > deadline:
                raise AssertionError(f"log line not seen within {timeout}s: {predicate!r}\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return f"--- argv: {' '.join(self.argv)}\n--- stdout:\n{self.logs()[-8000:]}\n--- stderr:\n{self.stderr()[-8000:]}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit on its own; returns its exit code."""
        return self.proc.wait(timeout)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Poll GET /health until 200; pytest.fail with the output if it exits or times out."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0, trust_env=False) as c:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"gateway exited with {self.proc.returncode} before becoming ready\n{self.output()}")
                try:
                    if c.get(self.url + "/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"gateway not ready within {timeout}s\n{self.output()}")
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig` to the gateway, wait up to `timeout`; SIGKILL the group after that.

        Returns the exit code (negative signal number if it was killed).
        """
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_group()
        return self.proc.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def _reap_group(self) -> None:
        """Kill leftovers (e.g. worker processes) in the gateway's process group."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def rewrite_config(self, config: dict | str) -> None:
        """Replace the config file atomically (temp file + os.replace), e.g. for hot reload."""
        _write_json_atomic(self.config_path, config)

    def __repr__(self) -> str:
        return f"<Gateway {self.url} pid={self.proc.pid} alive={self.alive()}>"


def _start_gateway_process(tmp: Path, config_path: Path, port: int, env: dict[str, str] | None,
                           workers: int, extra_args: Iterable[str], n: int) -> Gateway:
    argv = [sys.executable, "-m", "kairos", "serve", "--config", str(config_path),
            "--host", "127.0.0.1", "--port", str(port)]
    if workers != 1:
        argv += ["--workers", str(workers)]
    argv += list(extra_args)
    out = tmp / f"gateway{n}.stdout.log"
    err = tmp / f"gateway{n}.stderr.log"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(argv, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                cwd=str(tmp), env=_hermetic_env(env), start_new_session=True)
    return Gateway(config_path, port, proc, out, err, argv)


@pytest.fixture
def gateway(tmp_path):
    """Factory starting a real gateway subprocess.

        gw = gateway(config, env=None, workers=1, extra_args=(), wait=True, timeout=15, port=None)

    `config` is a dict (written as JSON) or a str (written verbatim, for
    invalid-JSON tests). The child gets os.environ minus KAIROS_* plus `env`,
    cwd=tmp_path, its own session/process group. With wait=True it blocks until
    GET /health is 200 (pytest.fail with the output otherwise); wait=False
    returns at once (use gw.wait() for the exit code of a failing start).
    Every gateway still running at teardown gets SIGTERM, then SIGKILL.
    """
    started: list[Gateway] = []

    def factory(config: dict | str, env: dict[str, str] | None = None, workers: int = 1,
                extra_args: Iterable[str] = (), wait: bool = True, timeout: float = 15.0,
                port: int | None = None) -> Gateway:
        n = len(started)
        config_path = tmp_path / f"gateway{n}.json"
        _write_json_atomic(config_path, config)
        extra_args = list(extra_args)
        for attempt in range(3):
            p = port or free_port()
            gw = _start_gateway_process(tmp_path, config_path, p, env, workers, extra_args, n)
            started.append(gw)
            if not wait:
                return gw
            # Retry only the free_port() race: someone grabbed the port first.
            deadline = time.monotonic() + timeout
            while gw.proc.poll() is None and time.monotonic() < deadline:
                try:
                    with httpx.Client(timeout=1.0, trust_env=False) as c:
                        if c.get(gw.url + "/health").status_code == 200:
                            return gw
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            in_use = "address already in use" in (gw.stderr() + gw.logs()).lower()
            if gw.proc.poll() is not None and in_use and port is None and attempt < 2:
                continue
            gw.wait_ready(0.0)  # fails the test with the captured output
            return gw
        raise AssertionError("unreachable")

    yield factory
    for gw in started:
        if gw.alive():
            gw.stop(signal.SIGTERM, timeout=10)
        else:
            gw._reap_group()


@pytest.fixture
def kairos_cli(tmp_path):
    """Run `python -m kairos *args` to completion: kairos_cli("validate", path, env=None, timeout=30).

    Returns subprocess.CompletedProcess with text stdout/stderr.
    """

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 30.0,
            input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kairos", *map(str, args)], capture_output=True,
                              text=True, cwd=str(tmp_path), env=_hermetic_env(env), timeout=timeout,
                              input=input)

    return run


# --------------------------------------------------------------------------- redis
class RedisServer(str):
    """A redis-server subprocess. The object IS its URL (a str: redis://127.0.0.1:P/0)."""

    def __new__(cls, port: int, workdir: Path):
        self = super().__new__(cls, f"redis://127.0.0.1:{port}/0")
        self.port = port
        self.host = "127.0.0.1"
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        return self

    @property
    def url(self) -> str:
        return str(self)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> "RedisServer":
        """Start (or restart, same port) and wait until it answers PING."""
        if self.running:
            return self
        log = open(self.workdir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--bind", "127.0.0.1", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(self.workdir),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-2000:]}")
            try:
                if self.command("PING") == "PONG":
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING in time")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it (SIGTERM, SIGKILL after `timeout`) -- for outage tests."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def command(self, *args: str) -> Any:
        """Send one command over a fresh connection (tiny RESP client, enough for tests)."""
        payload = f"*{len(args)}\r\n".encode()
        for a in args:
            b = str(a).encode()
            payload += b"$%d\r\n%s\r\n" % (len(b), b)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload)
            f = s.makefile("rb")
            return _read_resp(f)

    def flush(self) -> None:
        self.command("FLUSHALL")

    def keys(self, pattern: str = "*") -> list[str]:
        return self.command("KEYS", pattern) or []


def _read_resp(f) -> Any:
    line = f.readline()
    if not line:
        raise OSError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_resp(f) for _ in range(n)]
    raise RuntimeError(f"unexpected RESP reply {line!r}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """Session-scoped redis-server on a free port (skip if not installed; fail if CI=true)."""
    if shutil.which("redis-server") is None:
        msg = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{msg}; CI=true requires it")
        pytest.skip(msg)
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_clean(redis_server):
    """redis_server, (re)started if a previous outage test left it down, and flushed."""
    redis_server.start()
    redis_server.flush()
    return redis_server


# --------------------------------------------------------------------------- clients
@pytest.fixture
async def client():
    """httpx.AsyncClient(timeout=10), ignoring proxy environment variables."""
    async with httpx.AsyncClient(timeout=10, trust_env=False) as c:
        yield c


@pytest.fixture
def sync_client():
    """httpx.Client(timeout=10), ignoring proxy environment variables."""
    with httpx.Client(timeout=10, trust_env=False) as c:
        yield c


@pytest.fixture
def compat_dir() -> Path:
    """../shared/compat with kairos-rs's real config files; skips the test when absent."""
    p = shared_compat_dir()
    if p is None:
        pytest.skip(f"{REPO_ROOT.parent / 'shared' / 'compat'} not found (kairos-rs compat configs)")
    return p


# --------------------------------------------------------------------------- tiers
_HERE = Path(__file__).resolve().parent
_UNIT = _HERE / "unit"
_INTEGRATION = _HERE / "integration"


def pytest_collection_modifyitems(session, config, items):
    """The unit tier first (fast failures), then everything else, each in collection order."""
    items.sort(key=lambda item: 0 if _UNIT in Path(str(item.path)).parents else 1)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    reports = [r for key in ("passed", "failed", "error") for r in terminalreporter.stats.get(key, [])]
    stray = sorted({
        path for path in (getattr(r, "nodeid", "").split("::")[0] for r in reports)
        if path.startswith("tests/") and path.count("/") == 1
    })
    if stray:
        terminalreporter.write_line(
            "tests outside tests/unit and tests/integration (move them; docs/architecture.md, 'Tests'): "
            + ", ".join(stray)
        )
