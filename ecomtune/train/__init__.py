"""Training: stages as plain functions, per-component trainability, the TRL bridge, run manifests."""

from ecomtune.train.stages import StageResult, run_align, run_sft

__all__ = ["StageResult", "run_align", "run_sft"]
