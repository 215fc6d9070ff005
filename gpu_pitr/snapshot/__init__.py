"""Base snapshots (SPEC section 4): the state at a log position, on disk."""
