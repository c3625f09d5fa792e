"""The feedback store: every answer the gateway gave and what users thought of it.

One schema for PostgreSQL (clusters) and SQLite (the embedded default), created and
upgraded by alembic (`contextlm migrate`). `store.FeedbackStore` is the only API the
gateway, the operator (counts for status) and the training export use.
"""
