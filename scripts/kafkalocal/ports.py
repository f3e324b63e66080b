"""Loopback ports: is one free, are all of a node's free, and finding a free run of them."""

from __future__ import annotations

import random
import socket

from .errors import KafkaLocalError


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The JVM binds with SO_REUSEADDR too, so a TIME_WAIT leftover is not "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_ports_free(ports: list[int]) -> None:
    busy = [str(p) for p in ports if port_in_use(p)]
    if busy:
        which = f"port {busy[0]} is" if len(busy) == 1 else f"ports {', '.join(busy)} are"
        raise KafkaLocalError(
            f"{which} already in use on 127.0.0.1: stop what listens there (ss -ltnp) "
            "or pick other ports (--port/--controller-port)"
        )


def free_ports(count: int) -> list[int]:
    """``count`` consecutive free loopback ports, below Linux's ephemeral range (32768+)."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        ports = list(range(base, base + count))
        if not any(port_in_use(p) for p in ports):
            return ports
    raise KafkaLocalError(f"found no {count} consecutive free ports in 20000-32000")
