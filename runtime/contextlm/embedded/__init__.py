"""The embedded default: the same custom resources as a cluster, run on one machine.

`contextlm up` (up.py) runs the system as local processes; `ask`, `feedback`, `status`
(client.py) and `align` (align.py) find it through the state file it writes in its data
dir (state.py). system.py reads and validates the resources, processes.py runs the
components, progress.py turns their logs into progress bars, status.py writes status in
the operator's words.
"""

from .system import EmbeddedError, System, load_system

__all__ = ["EmbeddedError", "System", "load_system"]
