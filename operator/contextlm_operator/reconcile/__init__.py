"""Reconcilers: read spec and observed children, apply desired children, write status."""
