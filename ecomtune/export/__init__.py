"""`ecomtune export`: a finished run leaves ecomtune as a model folder that plain transformers, vLLM and
evaluation harnesses load, verified against the run it came from."""
