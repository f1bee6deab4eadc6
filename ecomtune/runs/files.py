"""The names of the files in a run folder, in one place: training writes them, resuming, inference, export and
bench read them, and a name spelt twice is a name that can drift.

A run folder holds the manifest, the stage's weights (a PEFT adapter, or an aligned projector), the processor
files, the live metrics, the libraries' log and, while training, `checkpoint-N/` folders each sealed once
complete. The Hugging Face files (adapter, trainer state, training arguments) keep the names PEFT and the
Trainer give them; the constants only say where ecomtune relies on those names.
"""

from __future__ import annotations

MANIFEST = "manifest.json"  # what ran, on what, with which settings; written first and last (also by export)
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's name for a LoRA adapter's weights
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's adapter config: its base model and target modules
PROJECTOR_FILE = "projector.safetensors"  # an align run's trained projector
METRICS_FILE = "metrics.jsonl"  # one line per logged step, written while training
LIBRARY_LOG = "train.log"  # the libraries' own output, kept out of the terminal unless --verbose
CHECKPOINT_SEAL = "ecomtune-checkpoint.json"  # written last into checkpoint-N/: the checkpoint is complete
TRAINER_STATE = "trainer_state.json"  # the Trainer's state inside checkpoint-N/
TRAINING_ARGS = "training_args.bin"  # the Trainer's pickled arguments, removed from finished runs
