"""Tables for serving (routes), on the ledger's declarative Base; imported by schema.py so every store has them."""

from tuneops.store.schema import Base  # noqa: F401
