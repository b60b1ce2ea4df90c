"""A deadline after SIGTERM / SIGINT: the process ends even when it is blocked inside a collective.

Python runs signal handlers only between bytecodes of the main thread. A rank waiting in ``all_reduce`` for a
peer that never comes sits in C and never runs them: Lightning's graceful SIGTERM handling, ``timeout``, SLURM's
``scancel`` and Ctrl-C all wait with it. :func:`install_exit_deadline` registers a wakeup file descriptor (which
the C-level handler writes to at once, whatever the main thread is doing) and a watcher thread that, once
``grace_seconds`` have passed after the signal without the process ending on its own, stops the processes it
launched and exits with ``128 + signal``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_exit_deadline(grace_seconds: float = 30.0) -> bool:
    """After SIGTERM or SIGINT, give the process ``grace_seconds`` to stop by itself (saving, logging), then
    kill its child processes and exit. Call from the main thread; returns ``False`` (nothing installed) when
    another wakeup descriptor is already registered or ``grace_seconds`` is not positive.
    """
    if grace_seconds is None or grace_seconds <= 0 or threading.current_thread() is not threading.main_thread():
        return False
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    if previous != -1:  # someone else (an event loop) reads signals this way: leave theirs in place
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()
        return False
    # The descriptor is written only for signals with a Python handler (Lightning's SIGTERM handler during
    # fit, Python's SIGINT handler); without one the kernel's default action ends the process anyway.
    thread = threading.Thread(target=_watch, args=(reader, writer, grace_seconds), name="vtok-exit-deadline",
                              daemon=True)
    thread.start()
    return True


def _watch(reader: socket.socket, writer: socket.socket, grace_seconds: float) -> None:
    while True:
        data = reader.recv(64)
        stops = [signum for signum in data if signum in STOP_SIGNALS]
        if stops:
            break
    signum = stops[0]
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
    # Still here: the main thread is stuck (a collective, a hung reader); the handlers never ran.
    children = child_processes(os.getpid())
    log.error("signal %d received %.0f s ago and the process is still running (blocked, e.g. in a collective "
              "waiting for another rank): killing %d child process(es) and exiting", signum, grace_seconds,
              len(children))
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os._exit(128 + signum)


def stop_child_processes(grace_seconds: float = 5.0) -> None:
    """SIGTERM every child process (other ranks started by this one, data-loader workers), then SIGKILL those still
    running after ``grace_seconds``: a failed rank leaves no orphan waiting forever for it."""
    children = child_processes(os.getpid())
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while children and time.monotonic() < deadline:
        children = [pid for pid in children if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]
        time.sleep(0.1)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def child_processes(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux ``/proc``; an empty list elsewhere)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return children
