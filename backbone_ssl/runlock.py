"""One process per run folder: an OS file lock held for the life of a run.

``RUN/.lock`` is locked with ``filelock`` (``flock``; released by the OS when the process dies);
``RUN/.lock.json`` records who holds it (pid, host, start time) so a second process is told whom
it is waiting for. A record left behind by a dead process on this host (a stale lock) is broken
with a warning line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from backbone_ssl.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
HOLDER_NAME = ".lock.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(run_dir: str | os.PathLike) -> dict | None:
    """The ``{"pid", "host", "since"}`` record of the lock's holder, or None."""
    try:
        data = json.loads((Path(run_dir) / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    return (f"pid {holder.get('pid')} on host {holder.get('host')} "
            f"(since {holder.get('since', '?')})")


class RunLock:
    """``with RunLock(run_dir):`` holds the run folder's lock, or raises a one-line UserError.

    A second process (any host sharing the folder) gets ``UserError`` naming the holder's pid and
    host: exit 2 on the command line.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self._lock = FileLock(str(self.run_dir / LOCK_NAME), timeout=0)

    def acquire(self) -> RunLock:
        """Take the lock (non-blocking); record pid and host; break a stale record."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise UserError(
                f"run folder {self.run_dir} is in use by {_describe(read_holder(self.run_dir))}; "
                "one process per run folder: wait for it to finish or choose another --out"
            ) from None
        host = socket.gethostname()
        old = read_holder(self.run_dir)
        if old and old.get("pid") != os.getpid():
            pid = old.get("pid")
            if old.get("host") == host and isinstance(pid, int) and _pid_alive(pid):
                # the OS lock was free yet a live process claims the folder (e.g. a filesystem
                # without working flock): refuse rather than share the run
                self._lock.release()
                raise UserError(
                    f"run folder {self.run_dir} is in use by {_describe(old)}; one process per "
                    "run folder: wait for it to finish or choose another --out")
            log.warning("breaking a stale lock on %s: %s is no longer running", self.run_dir,
                        _describe(old))
        record = {"pid": os.getpid(), "host": host,
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (self.run_dir / HOLDER_NAME).write_text(json.dumps(record) + "\n")
        return self

    def release(self) -> None:
        """Drop the holder record and the OS lock."""
        if self._lock.is_locked:
            holder = read_holder(self.run_dir)
            if holder and holder.get("pid") == os.getpid():
                (self.run_dir / HOLDER_NAME).unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
