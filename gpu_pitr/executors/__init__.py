"""executors stage of the restore pipeline."""
