"""Start a server binary on a free port, send commands, print each reply, stop it.

Provisioning uses it to check that a binary really runs on this machine and answers what the
project needs (a module loaded, a command known). Standard library only: it runs before any venv.

    server_probe.py BINARY 'PING' 'MODULE LIST'    # one command per argument, split on spaces

Replies print one line each, nested arrays flattened with spaces. Exit 0 when every reply is
not an error, 1 on the first error reply (printed), 2 when the server did not start.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


class ReplyError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def encode(args: list[str]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def read_reply(f: Any) -> Any:
    """One RESP2 reply; an error reply raises ReplyError."""
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise ReplyError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [read_reply(f) for _ in range(n)]
    raise ReplyError(f"unexpected reply {line!r}")


def flatten(reply: Any) -> str:
    if isinstance(reply, list):
        return " ".join(flatten(r) for r in reply)
    return "" if reply is None else str(reply)


def main(argv: list[str]) -> int:
    binary, commands = argv[0], argv[1:]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="memproc-probe-") as tmp:
        log = Path(tmp, "log")
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", tmp, "--logfile", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        err = proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
                        tail = log.read_text()[-1500:] if log.exists() else ""
                        print(f"{binary} did not start: {err}{tail}", file=sys.stderr)
                        return 2
                    time.sleep(0.01)
            with conn, conn.makefile("rb") as f:
                for command in commands:
                    conn.sendall(encode(command.split(" ")))
                    try:
                        print(flatten(read_reply(f)))
                    except ReplyError as exc:
                        print(f"-{exc}")
                        return 1
            return 0
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    os.environ.setdefault("LC_ALL", "C")
    sys.exit(main(sys.argv[1:]))
