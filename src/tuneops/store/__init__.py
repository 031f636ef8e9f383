from tuneops.store.store import Store, RUN_TRANSITIONS  # noqa: F401
