"""`contextlm status`: see contextlm.embedded.client."""

from ..client import add_status_arguments as add_arguments
from ..client import run_status as run

__all__ = ["add_arguments", "run"]
