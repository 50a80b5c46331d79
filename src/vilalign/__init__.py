"""vilalign: two-stream vision-language transformers and layer-wise alignment analysis."""

__version__ = "0.1.0"
