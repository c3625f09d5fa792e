"""Runtime components: each one a `contextlm <component>` subcommand, usable without
Kubernetes, configured by one pydantic model (`config.py`) that the operator renders."""
