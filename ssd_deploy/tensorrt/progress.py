"""Engine-build progress: TensorRT's IProgressMonitor phases as bars of the shared display (ssd_deploy/progress.py;
nested phases indented).

Builds of real models take minutes; TensorRT reports phases (name, parent, step count) from its builder threads.
"""

from __future__ import annotations

import contextlib
import threading

from rich.console import Console

from ..progress import display
from .api import TrtApi


@contextlib.contextmanager
def build_progress(api: TrtApi, console: Console | None = None):
    """Yields a progress monitor for ``IBuilderConfig.progress_monitor`` (None where this TensorRT has none)."""
    base = api.progress_monitor_base()
    if base is None:
        yield None
        return
    progress = display(console)

    class Monitor(base):
        def __init__(self):
            base.__init__(self)
            self.lock = threading.Lock()
            self.tasks: dict[str, tuple] = {}  # phase → (task id, depth)

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self.lock:
                depth = self.tasks[parent_phase][1] + 1 if parent_phase in self.tasks else 0
                task = progress.add_task("  " * depth + phase_name, total=max(num_steps, 1))
                self.tasks[phase_name] = (task, depth)

        def step_complete(self, phase_name, step):
            with self.lock:
                if phase_name in self.tasks:
                    progress.update(self.tasks[phase_name][0], completed=step + 1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            with self.lock:
                task = self.tasks.pop(phase_name, None)
                if task is not None:
                    progress.remove_task(task[0])

    with progress:
        yield Monitor()
