"""Export layer: one module per format, each registering a `Converter` (see `converters.base`)."""

from converters.base import Artifact, Converter, ExportSpec, Runtime, TensorSpec, get_converter, register_converter

__all__ = ["Artifact", "Converter", "ExportSpec", "Runtime", "TensorSpec", "get_converter", "register_converter"]
