"""A plain TCP socket's timeout kept by the kernel (SO_RCVTIMEO, SO_SNDTIMEO), not by Python.

A socket with a Python timeout is non-blocking underneath, and Python polls it for readiness
before each recv and send: every exchange makes twice the system calls, and among the processor's
64 threads twice the GIL hand-offs, since each call releases the GIL and takes it back. A blocking
socket with kernel timeouts makes one call. When the timeout passes, that call fails with EAGAIN,
which Python raises as BlockingIOError, so callers treat every error in `TIMED_OUT` as a timeout.
In drains at concurrency 64 (the cpu bench's, alternated in one process), this took the
processor from ~40 voluntary context switches per session to ~32, and its CPU down ~7%.

Only for plain sockets on Linux. A TLS socket keeps Python's timeout, because ssl's blocking read
retries SSL_ERROR_WANT_READ again and again, so a kernel timeout would never reach the caller.
Unlike Python's, a kernel timeout bounds each system call: a send that keeps making progress may
take longer in all, and a signal starts the wait again.
"""

from __future__ import annotations

import math
import socket
import struct
import sys

TIMED_OUT = (TimeoutError, BlockingIOError)
_KERNEL = sys.platform == "linux"


def _timeval(seconds: float | None) -> bytes:
    """A struct timeval of `seconds`; zero (wait without end) for None, infinity, or a wait
    longer than a timeval's seconds hold on every platform (2**31: 68 years)."""
    if seconds is None or math.isinf(seconds) or seconds >= 2**31:
        return struct.pack("@ll", 0, 0)
    whole, fraction = divmod(seconds, 1.0)
    micros = int(fraction * 1_000_000)
    return struct.pack("@ll", int(whole), micros or (0 if whole else 1))  # never 0 by rounding


def kernel_timeouts(sock: socket.socket) -> bool:
    """Whether `set_timeout` keeps this socket's timeout in the kernel."""
    return _KERNEL and type(sock) is socket.socket and sock.family in (socket.AF_INET, socket.AF_INET6)


def set_timeout(sock: socket.socket, seconds: float | None) -> None:
    """`sock.settimeout(seconds)`, kept by the kernel where `kernel_timeouts` says so (then an
    expiry raises BlockingIOError, not TimeoutError: callers catch `TIMED_OUT`). A zero timeout
    (non-blocking) is Python's."""
    if not kernel_timeouts(sock) or (seconds is not None and seconds <= 0):
        sock.settimeout(seconds)
        return
    value = _timeval(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    if sock.gettimeout() is not None:
        sock.settimeout(None)


def python_timeout(sock: socket.socket, seconds: float | None) -> None:
    """Back to Python's timeout of `seconds`, with no kernel timeout left behind, for code that
    sets the socket's timeout itself (redis-py does, with `settimeout`)."""
    if kernel_timeouts(sock):
        zero = _timeval(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, zero)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, zero)
    sock.settimeout(seconds)
