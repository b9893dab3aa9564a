VERSION = "0.1.0"
"""This library's version (also ``analytics_vitally.__version__``)."""
