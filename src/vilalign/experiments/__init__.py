"""vilalign.experiments."""
