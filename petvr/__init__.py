"""petvr: parameter-efficient text-video retrieval on a frozen CLIP backbone."""
__version__ = "0.1.0"
