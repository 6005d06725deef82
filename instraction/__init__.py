"""InstrAction: action-centric video-language pretraining on instructional video."""

__version__ = "0.1.0"
