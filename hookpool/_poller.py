"""What the manager thread waits on: ``select.epoll`` where there is one, else
``select.poll``.

With epoll, a worker's pipe can be muted and unmuted from another thread (``_fastpath``,
while the manager sleeps): each is one call into C, which a signal handler cannot cut in
half, and the table of what each descriptor is for stays the manager's alone.
"""

from __future__ import annotations

import contextlib
import os
import select

__all__ = ["Poller"]


class Poller:
    def __init__(self) -> None:
        epoll = getattr(select, "epoll", None)
        self._epoll = epoll() if epoll is not None else None
        self._poll = select.poll() if self._epoll is None else None
        #: What each registered descriptor is for; only the manager thread changes it.
        self._data: dict[int, object] = {}

    @property
    def can_mute(self) -> bool:
        """Whether ``mute``/``unmute`` work (epoll, and eventfd for the nudges)."""
        return self._epoll is not None and hasattr(os, "eventfd")

    def register(self, fd: int, data: object) -> None:
        self._data[fd] = data
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        else:
            assert self._poll is not None
            self._poll.register(fd, select.POLLIN)

    def unregister(self, fd: int) -> None:
        if self._data.pop(fd, None) is None:
            return
        with contextlib.suppress(OSError, KeyError, ValueError):
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                assert self._poll is not None
                self._poll.unregister(fd)

    def mute(self, fd: int) -> None:
        """Stop watching ``fd`` for now (from any thread; epoll only)."""
        assert self._epoll is not None
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)

    def unmute(self, fd: int) -> None:
        """Watch ``fd`` again (from any thread; epoll only)."""
        assert self._epoll is not None
        with contextlib.suppress(FileExistsError):
            self._epoll.register(fd, select.EPOLLIN)

    def wait(self, timeout: float | None) -> list[object]:
        """What became readable within ``timeout`` seconds (None: no limit)."""
        if self._epoll is not None:
            events = self._epoll.poll(-1 if timeout is None else timeout, len(self._data) or 1)
        else:
            assert self._poll is not None
            millis = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
            events = self._poll.poll(millis)
        data = self._data
        return [data[fd] for fd, _ in events if fd in data]

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        self._data.clear()
