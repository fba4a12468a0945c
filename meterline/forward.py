"""Commands that need the embedded ClickHouse while `meterline run` holds it run inside `run`.

The embedded engine (chdb) allows one process per data directory, and `run` holds it. So `run`
writes where it listens to <state_dir>/run.json, and a secret of this run to
<state_dir>/run.secret that only its user can read (meterline.guard refuses a command without it),
and `meterline sql | reconcile | invoice | dispute | review | replay | migrate` started beside it send
their arguments to `run`'s HTTP API instead of opening the directory. `run` executes the same
command in its own process and streams back what it prints, line by line (newline-delimited
JSON), then the exit code. Nothing changes for the user but one line on stderr saying where the
command ran.
"""

from __future__ import annotations

import io
import json
import os
import queue
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from meterline.core.config import Config
from meterline.core.errors import MeterlineError
from meterline.core.http import Request, Response, Route
from meterline.guard import SECRET_HEADER

COMMANDS = frozenset({"sql", "reconcile", "invoice", "dispute", "review", "replay", "migrate"})
"""The commands that may run inside `run`: the ones that need ClickHouse and nothing else of theirs."""
PATH_OPTIONS = ("--config", "--output")
"""Options naming files: made absolute before they travel, since `run` has its own directory."""


@dataclass(frozen=True)
class RunningRun:
    pid: int
    url: str
    secret: str


def run_file(config: Config) -> Path:
    return config.dev.state_dir / "run.json"


def secret_file(config: Config) -> Path:
    return config.dev.state_dir / "run.secret"


def announce(config: Config, url: str, secret: str) -> None:
    path = run_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(secret_file(config), secret)
    path.write_text(json.dumps({"pid": os.getpid(), "url": url}))


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by this user only: created 0600 under a fresh name, then renamed over
    `path` (a rename replaces a planted symlink instead of writing through it)."""
    fresh = path.with_name(f".{path.name}.{os.getpid()}")
    fresh.unlink(missing_ok=True)
    descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    fresh.replace(path)


def withdraw(config: Config) -> None:
    path = run_file(config)
    if path.exists() and json.loads(path.read_text()).get("pid") == os.getpid():
        path.unlink()
        secret_file(config).unlink(missing_ok=True)


def running(config: Config) -> RunningRun | None:
    """The `meterline run` of this config, if one is up (and it is not this process)."""
    try:
        document = json.loads(run_file(config).read_text())
        pid, url = int(document["pid"]), str(document["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid() or not Path(f"/proc/{pid}").exists():
        return None  # a run killed without cleaning up leaves the file behind
    try:
        secret = secret_file(config).read_text()
    except OSError as exc:
        raise MeterlineError(
            f"meterline run (pid {pid}) holds the embedded ClickHouse, and its secret "
            f"{secret_file(config)} cannot be read ({exc.strerror}): run this as the user that started it"
        ) from exc
    return RunningRun(pid, url, secret)


def absolute_paths(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    follows_path_option = False
    for token in argv:
        if follows_path_option:
            out.append(str(Path(token).absolute()))
        elif "=" in token and token.split("=", 1)[0] in PATH_OPTIONS:
            option, value = token.split("=", 1)
            out.append(f"{option}={Path(value).absolute()}")
        else:
            out.append(token)
        follows_path_option = token in PATH_OPTIONS
    return out


def forward(run: RunningRun, argv: Sequence[str], announce: bool = True) -> int:
    """Run `argv` inside `run`; print what it prints; its exit code."""
    if announce:
        print(
            f"(running inside meterline run, pid {run.pid}, which holds the embedded ClickHouse)",
            file=sys.stderr,
        )
    request = urllib.request.Request(
        f"{run.url}/api/cli",
        data=json.dumps({"argv": absolute_paths(argv)}).encode(),
        headers={"Content-Type": "application/json", SECRET_HEADER: run.secret},
        method="POST",
    )
    code = 1
    try:
        response = urllib.request.urlopen(request)
    except urllib.error.HTTPError as exc:
        reason = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise MeterlineError(f"meterline run (pid {run.pid}) refused the command: {reason}") from None
    with response:
        for line in response:
            message = json.loads(line)
            if "exit" in message:
                code = int(message["exit"])
            else:
                stream = sys.stdout if message["stream"] == "stdout" else sys.stderr
                stream.write(message["text"])
                stream.flush()
    return code


# -- the side of `run` --------------------------------------------------------------------------------


class _PerThreadStream(io.TextIOBase):
    """sys.stdout / sys.stderr of `run`: a forwarded command's thread writes to its request, every
    other thread to the real stream."""

    def __init__(self, default: TextIO) -> None:
        self.default = default
        self._local = threading.local()

    @property
    def target(self) -> TextIO | io.TextIOBase:
        target: TextIO | io.TextIOBase | None = getattr(self._local, "target", None)
        return target or self.default

    def write(self, text: str) -> int:
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase declares it read-only
        return self.default.encoding

    def fileno(self) -> int:
        return self.default.fileno()

    @contextmanager
    def to(self, target: io.TextIOBase) -> Iterator[None]:
        self._local.target = target
        try:
            yield
        finally:
            del self._local.target


class _Chunks(io.TextIOBase):
    def __init__(self, name: str, sink: queue.Queue[bytes | None]) -> None:
        self.name, self.sink = name, sink

    def write(self, text: str) -> int:
        if text:
            self.sink.put(json.dumps({"stream": self.name, "text": text}).encode() + b"\n")
        return len(text)

    def isatty(self) -> bool:
        return False


def cli_route(execute: Callable[[list[str]], int], allowed: bool) -> Route:
    """POST /api/cli {"argv": [...]}: run a forwardable command here, streaming its output. Who may
    call it is meterline.guard's to check.

    `allowed` is False when `run` listens beyond loopback: running commands (replay --repair among
    them) from beyond this machine is not something to do, whatever the secret."""
    out, err = _PerThreadStream(sys.stdout), _PerThreadStream(sys.stderr)
    sys.stdout, sys.stderr = out, err

    def route(request: Request) -> Response:
        if not allowed:
            return Response.json(
                {"error": "commands run through the API only when [run] host is loopback"}, 403
            )
        try:
            argv = [str(a) for a in json.loads(request.body)["argv"]]
        except (ValueError, KeyError, TypeError):
            return Response.error(400, 'expected {"argv": ["command", ...]}')
        command = next((a for a in argv if not a.startswith("-") and a not in _values_of(argv)), None)
        if command not in COMMANDS:
            return Response.json(
                {"error": f"{command!r} does not run through the API (only {sorted(COMMANDS)})"}, 400
            )
        chunks: queue.Queue[bytes | None] = queue.Queue()

        def work() -> None:
            code = 1
            with out.to(_Chunks("stdout", chunks)), err.to(_Chunks("stderr", chunks)):
                try:
                    code = execute(argv)
                except BaseException as exc:  # the exit code must reach the caller whatever happened
                    print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            chunks.put(json.dumps({"exit": code}).encode() + b"\n")
            chunks.put(None)

        threading.Thread(target=work, name=f"api-{command}", daemon=True).start()
        return Response(200, iter(chunks.get, None), "application/x-ndjson")

    return route


def _values_of(argv: Sequence[str]) -> set[str]:
    """The tokens that are values of options before the command (only --config takes one there)."""
    return {argv[i + 1] for i, token in enumerate(argv[:-1]) if token == "--config"}
