"""cutover: watch a live migration between two platforms and say when the candidate regresses."""

__version__ = "0.1.0"
