"""plan stage of the restore pipeline."""
