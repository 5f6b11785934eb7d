"""dsconv: measure what depthwise-separable convolutions really buy over standard convolutions."""

__version__ = "0.1.0"
