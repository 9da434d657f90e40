"""dermmobile: fine-tune skin-condition classifiers and ship them to phones.

A research tool, not a diagnosis: nothing it prints is medical advice.
"""

__version__ = "0.1.0"
