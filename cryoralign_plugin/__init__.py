"""scipion-em-cryoralign: fast 2D alignment and classification by polar resampling."""
__version__ = "0.1.0"
