"""What a loader's worker process does as it starts, so that it never outlives nor outvotes the
main process (the torch DataLoader's workers watch their parent themselves; DALI's do not)."""
from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import sys
import threading
import time


def start_worker(worker_id: int | None = None) -> None:
    """What a loader's worker does first (torch's worker_init_fn; DALI's source calls it too)."""
    ignore_interruptions()
    quiet_when_orphaned()


_REAPING = False


def reap_at_exit() -> None:
    """Called in the main process by every loader that starts workers.  At the interpreter's exit
    multiprocessing SIGTERMs its daemonic children and then waits for them; ours ignore SIGTERM
    (ignore_interruptions), so a loader still running then (never closed, or left by an error)
    would hang the exit for ever.  This exit hook, registered after multiprocessing's own and so
    run before it, kills those children: the daemonic ones that ignore SIGTERM."""
    global _REAPING
    if not _REAPING:
        atexit.register(_kill_children_deaf_to_sigterm)
        _REAPING = True


def _ignores_sigterm(pid: int) -> bool:
    """Whether process `pid` ignores SIGTERM (its SigIgn mask in /proc; without /proc: assume so)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            mask = next(line for line in status if line.startswith("SigIgn:")).split()[1]
    except (OSError, StopIteration):
        return True
    return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)


def _kill_children_deaf_to_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report the killed workers as failed
    for child in multiprocessing.active_children():
        if child.daemon and child.pid is not None and _ignores_sigterm(child.pid):
            child.kill()
            child.join(5)


def ignore_interruptions(worker_id: int | None = None) -> None:
    """SIGINT and SIGTERM are ignored.  Ctrl-C reaches the whole process group, and a cluster may
    signal every process of a job: the main process decides what they do (the trainer finishes its
    step and checkpoints), so no worker may stop in the middle of a batch (torch's worker_init_fn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def quiet_when_orphaned() -> None:
    """Once the parent is gone (a second Ctrl-C ends it by the signal, a crash, SIGKILL), a worker's
    errors until it ends are noise on the caller's terminal: multiprocessing's resource-sharer
    thread, for one, reports through sys.excepthook the connection the dead parent broke
    (ConnectionResetError).  Both excepthooks drop what they get then."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    hook, thread_hook = sys.excepthook, threading.excepthook

    def quiet(*args):
        if parent.is_alive():
            hook(*args)

    def quiet_thread(args):
        if parent.is_alive():
            thread_hook(args)

    sys.excepthook, threading.excepthook = quiet, quiet_thread


def exit_with_parent(parent: int, every: float = 0.2) -> None:
    """End this process within `every` seconds of its parent `parent`, however that ends (a crash,
    SIGKILL): DALI's workers wait on shared-memory queues that nobody closes then, and would stay,
    holding the caller's stdout.  A daemon thread polls the parent's pid."""
    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="stafast-parent-watch").start()
