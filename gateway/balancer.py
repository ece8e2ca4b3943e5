"""Per-request load balancing over the replicas of one stage.

``<STAGE>_URL`` may list several base URLs separated by commas, and each host name that resolves to several
addresses (a Kubernetes headless Service, ``docker compose --scale``) counts as one replica per address; names
are re-resolved every ``resolve_interval`` seconds. Each request goes to the replica with the fewest requests
in flight (ties broken round robin), so a pooled keep-alive connection never pins a stage to one replica. A
replica whose request failed in transport is skipped for ``eject_seconds`` and by the retry of that request.
"""
from __future__ import annotations

import ipaddress
import itertools
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

# Names that resolve to both 127.0.0.1 and ::1 while a server usually listens on only one of them.
NO_EXPANSION_HOSTS = {"localhost"}


@dataclass
class Replica:
    url: str                   # base URL without a trailing slash
    outstanding: int = 0
    ejected_until: float = 0.0
    served: int = 0


def split_urls(spec: str) -> list[str]:
    return [part.strip().rstrip("/") for part in spec.split(",") if part.strip()]


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def resolve(url: str) -> list[str]:
    """One base URL per address of the URL's host; the URL itself when the host is one address or a literal."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or _is_literal(host) or host in NO_EXPANSION_HOSTS:
        return [url]
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return [url]  # unresolvable now: keep the name, the request reports the error
    addresses = sorted({info[4][0] for info in infos})
    if len(addresses) <= 1:
        return [url]
    expanded = []
    for address in addresses:
        netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        expanded.append(urlunsplit((parts.scheme, netloc, parts.path, "", "")))
    return expanded


class ReplicaSet:
    """The replicas of one stage. Thread-safe; no event loop needed (DNS runs at most once per interval)."""

    def __init__(self, spec: str, resolve_interval: float = 10.0, eject_seconds: float = 5.0):
        self.urls = split_urls(spec)
        if not self.urls:
            raise ValueError(f"no URL in {spec!r}")
        self.resolve_interval = resolve_interval
        self.eject_seconds = eject_seconds
        self._lock = threading.Lock()
        self._replicas: dict[str, Replica] = {}
        self._resolved_at = float("-inf")
        self._turn = itertools.count()

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._resolved_at < self.resolve_interval:
            return
        self._resolved_at = now
        current = [u for url in self.urls for u in resolve(url)]
        # Keep the in-flight counts of replicas that are still there.
        self._replicas = {u: self._replicas.get(u) or Replica(u) for u in current}

    def replicas(self) -> list[Replica]:
        with self._lock:
            self._refresh()
            return list(self._replicas.values())

    def acquire(self, exclude: set[str] = frozenset()) -> Replica:
        """The replica for the next request; counted as in flight until ``release``."""
        with self._lock:
            self._refresh()
            now = time.monotonic()
            candidates = [r for r in self._replicas.values() if r.url not in exclude and r.ejected_until <= now]
            if not candidates:  # every replica failed lately: try the ones not yet tried by this request
                candidates = [r for r in self._replicas.values() if r.url not in exclude] or \
                             list(self._replicas.values())
            # fewest in flight; among those the one that has served least (short requests finish before the
            # next arrives, so in-flight counts alone tie all the time), then in turn
            fewest = min((r.outstanding, r.served) for r in candidates)
            tied = [r for r in candidates if (r.outstanding, r.served) == fewest]
            replica = tied[next(self._turn) % len(tied)]
            replica.outstanding += 1
            replica.served += 1
            return replica

    def release(self, replica: Replica, failed: bool = False) -> None:
        with self._lock:
            replica.outstanding = max(0, replica.outstanding - 1)
            if failed:
                replica.ejected_until = time.monotonic() + self.eject_seconds
            else:
                replica.ejected_until = 0.0
