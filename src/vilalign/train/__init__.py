"""vilalign.train."""
