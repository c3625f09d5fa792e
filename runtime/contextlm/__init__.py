"""contextlm: managed contextual language-model systems on Kubernetes."""

__version__ = "0.1.0"
