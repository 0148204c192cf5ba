"""Video decoding, frame cache and benchmark readers."""
