"""Alembic environment of the feedback store (run by `contextlm migrate`)."""
