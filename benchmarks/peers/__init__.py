"""Benchmark harnesses for the peer libraries pg_scheduler is compared against.

Each peer module (``pgqueuer``, ``procrastinate``, ``chancy``) holds its adapter and exposes its
scenarios as ``LIBRARY`` (a ``benchmarks.library.Library``); see ``_harness`` for how each one is
measured.  Peer modules import their
library at import time, so ``PEERS`` imports them lazily: a peer whose library is not
installed is reported as skipped instead of breaking the whole benchmark.

    from benchmarks.peers import PEERS, PeerUnavailable
    try:
        rate = PEERS["chancy"].LIBRARY.drain(dsn)
    except PeerUnavailable as exc:
        print("skipped:", exc)
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType

PEER_NAMES: tuple[str, ...] = ("pgqueuer", "procrastinate", "chancy")


class PeerUnavailable(ImportError):
    """The peer's library (or one of its dependencies) cannot be imported."""


class _LazyPeers(Mapping[str, ModuleType]):
    """Name -> peer module, imported on first access and cached."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._loaded: dict[str, ModuleType] = {}

    def __getitem__(self, name: str) -> ModuleType:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._loaded:
            try:
                self._loaded[name] = importlib.import_module(f"{__name__}.{name}")
            except ImportError as exc:
                raise PeerUnavailable(f"{name}: {exc}") from exc
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


PEERS: Mapping[str, ModuleType] = _LazyPeers(PEER_NAMES)


def load_peers(
    names: tuple[str, ...] | list[str] = PEER_NAMES,
) -> tuple[dict[str, ModuleType], dict[str, str]]:
    """Import the requested peers; returns ``(available, skipped_with_reason)``."""
    available: dict[str, ModuleType] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            available[name] = PEERS[name]
        except (PeerUnavailable, KeyError) as exc:
            skipped[name] = str(exc)
    return available, skipped


__all__ = ["PEERS", "PEER_NAMES", "PeerUnavailable", "load_peers"]
