"""vilalign.analysis."""
