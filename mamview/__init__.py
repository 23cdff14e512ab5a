"""mamview: serial screening mammograms beside an image-based 5-year risk trajectory."""

__version__ = "0.1.0"
