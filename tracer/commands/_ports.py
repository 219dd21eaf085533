"""Take or check a TCP port before a command loads anything, and say which one is busy.

`serve` binds its listening socket here and hands it to uvicorn, so the port cannot be taken
between the check and the bind; `site serve` checks with `ensure_free` before it builds the
site (a build takes seconds; a busy port should fail at once).
"""
from __future__ import annotations

import errno
import socket


class PortError(ValueError):
    """The port cannot be used (printed by the CLI as one line, exit status 2)."""


def listen(host: str, port: int, flag: str = "--port") -> socket.socket:
    """A bound socket on host:port (port 0: any free one), or PortError naming the busy port."""
    if not 0 <= port <= 65535:
        raise PortError(f"{flag} must be in 0..65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise PortError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror or exc})") from None
    listener = socket.socket(family, socket.SOCK_STREAM)
    # SO_REUSEADDR lets a restarted server reuse a port in TIME_WAIT; on Linux it does not let
    # two servers listen on one port, so a busy port still fails here.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortError(
                f"cannot listen on {host}:{port}: port {port} is busy (another server is using it); "
                f"stop it or pass another {flag}"
            ) from None
        raise PortError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return listener


def ensure_free(host: str, port: int, flag: str = "--port") -> None:
    """PortError now if host:port cannot be listened on; the caller binds it later itself."""
    listen(host, port, flag).close()
