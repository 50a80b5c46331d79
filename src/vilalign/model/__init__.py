"""vilalign.model."""
