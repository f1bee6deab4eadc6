"""TRL's SFTConfig as ecomtune builds it from a recipe's train settings."""

from __future__ import annotations

import warnings

import torch

from ecomtune.config.schema import TrainSettings
from ecomtune.train.trl_bridge import sft_config


def test_checkpointing_reaches_the_trainer_without_a_deprecation_warning(tmp_path):
    for enabled in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # transformers 5 warns on the renamed option's old name
            config = sft_config(TrainSettings(gradient_checkpointing=enabled), tmp_path, torch.float32)
        assert config.gradient_checkpointing is enabled, "the name transformers and TRL read"
        assert config.gradient_checkpointing_kwargs == {"use_reentrant": False}
