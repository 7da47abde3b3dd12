"""expo-batch: model extrapolation (ExPO) for a whole registry of SFT/aligned pairs."""

__version__ = "0.1.0"
