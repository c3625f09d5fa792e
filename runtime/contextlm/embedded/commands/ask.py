"""`contextlm ask`: see contextlm.embedded.client."""

from ..client import add_ask_arguments as add_arguments
from ..client import run_ask as run

__all__ = ["add_arguments", "run"]
