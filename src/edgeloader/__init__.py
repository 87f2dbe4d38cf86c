"""edgeloader: gets proprietary models and images onto edge devices safely."""

__version__ = "0.1.0"
