"""resolve stage of the restore pipeline."""
