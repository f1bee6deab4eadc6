"""ecomtune: adapt any Hugging Face vision-language model to e-commerce product understanding."""

__version__ = "0.1.0"
