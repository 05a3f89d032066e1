"""quant-workbench: INT8/FP8 quantization workbench for Hugging Face transformer encoders."""

__version__ = "0.2.0"
