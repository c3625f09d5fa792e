"""`contextlm feedback`: see contextlm.embedded.client."""

from ..client import add_feedback_arguments as add_arguments
from ..client import run_feedback as run

__all__ = ["add_arguments", "run"]
