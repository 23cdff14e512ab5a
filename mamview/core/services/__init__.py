"""Background workers with no Qt: the inference service (inference), its decode processes
(pipeline), its child process (inference_process), the full-resolution decode child (decode),
and the process-wide generation ids they hand out (generations)."""

import os as _os


def default_cpu_threads() -> int:
    """The torch threads CPU scoring uses: every core but one, which stays with the window
    (what `mamview check` and the status bar report)."""
    return max(1, (_os.cpu_count() or 2) - 1)
