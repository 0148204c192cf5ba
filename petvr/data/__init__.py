"""Video decoding, frame cache, benchmark readers and the synthetic world."""
