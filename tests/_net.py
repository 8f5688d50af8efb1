"""Networking helpers for tests that start process groups on this machine."""

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a torch.distributed group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
