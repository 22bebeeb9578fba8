"""What a loader's worker process does as it starts, so that it never outlives nor outvotes the
main process (the torch DataLoader's workers watch their parent themselves; DALI's do not)."""
from __future__ import annotations

import os
import signal
import threading
import time


def ignore_interruptions(worker_id: int | None = None) -> None:
    """SIGINT and SIGTERM are ignored.  Ctrl-C reaches the whole process group, and a cluster may
    signal every process of a job: the main process decides what they do (the trainer finishes its
    step and checkpoints), so no worker may stop in the middle of a batch (torch's worker_init_fn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def exit_with_parent(parent: int, every: float = 0.2) -> None:
    """End this process within `every` seconds of its parent `parent`, however that ends (a crash,
    SIGKILL): DALI's workers wait on shared-memory queues that nobody closes then, and would stay,
    holding the caller's stdout.  A daemon thread polls the parent's pid."""
    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="stafast-parent-watch").start()
