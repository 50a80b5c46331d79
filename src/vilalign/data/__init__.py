"""vilalign.data."""
