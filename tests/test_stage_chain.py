"""align -> mid -> sft on the tiny backbone: each stage starts exactly where the one before it ended.

mid starts from align's projector with a new adapter; sft continues mid's adapter (the same base, the same
LoRA weights, the same projector), so its logits at step 0 equal mid's final logits on the same batch, and the
final adapter still loads with plain transformers + peft.
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from ecomtune.config.recipe_files import load_recipe
from ecomtune.errors import ConfigError
from ecomtune.train.stages import run_stage
from tests.conftest import quick_overrides

pytestmark = pytest.mark.slow


def overrides(catalog) -> list[str]:
    return [*quick_overrides("align", steps=2), *quick_overrides("mid", steps=2), *quick_overrides("sft", steps=2),
            "mid.train.learning_rate=0.01"]


@pytest.fixture(scope="module")
def batch(catalog):
    """Two mid-stage samples as one batch, without labels."""
    from ecomtune.backbones.model_loading import load_processor
    from ecomtune.backbones.registry import resolve_backbone
    from ecomtune.data.batches.collator import VisionChatCollator
    from ecomtune.data.canonical_file import load_canonical_file

    processor = load_processor(resolve_backbone("tiny-qwen2-vl"))
    samples = load_canonical_file(catalog["mid"])[:2]
    inputs = VisionChatCollator(processor, None, "chat")([s.to_row() for s in samples])
    inputs.pop("labels")
    return inputs


def logits(model, inputs) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(**inputs).logits.detach().clone()
    model.train(was_training)
    return out


class LogitsAtStart(TrainerCallback):
    def __init__(self, inputs) -> None:
        self.inputs, self.logits = inputs, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.logits = logits(model, self.inputs)


@pytest.fixture(scope="module")
def chain(catalog, tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    recipe = load_recipe(None, overrides(catalog), {"align.data": catalog["captions"], "mid.data": catalog["mid"],
                                                     "sft.data": catalog["instruct"]})
    aligned = run_stage("align", recipe, root / "align")
    mid = run_stage("mid", recipe, root / "mid", init_from=aligned.output)
    return recipe, root, aligned, mid


def test_sft_starts_exactly_where_mid_ended(chain, batch):
    recipe, root, _, mid = chain
    assert mid.manifest["stage"] == "mid" and mid.manifest["init_from"] == str(root / "align")
    ended = logits(mid.model, batch)
    start = LogitsAtStart(batch)
    tuned = run_stage("sft", recipe, root / "sft", init_from=mid.output, callbacks=[start])
    assert torch.equal(start.logits, ended), f"max difference {(start.logits - ended).abs().max():.3g}"
    assert tuned.manifest["metrics"]["global_step"] == 2
    lora_names = {n for n, p in tuned.model.named_parameters() if p.requires_grad and ".lora_" in n}
    assert lora_names, "the continued adapter trains"

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    from ecomtune.backbones.model_loading import same_4bit_math_on_every_cpu

    base = AutoModelForImageTextToText.from_pretrained(
        tuned.manifest["outputs"]["base"], dtype=torch.float32,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32,
                                               llm_int8_skip_modules=["model.visual", "lm_head"]))
    # bitsandbytes multiplies a plain 4-bit load in bfloat16 on AVX512-BF16 CPUs; ecomtune's loads compute in the
    # compute dtype everywhere (as on a GPU), so the plain side is set to compute as it does on a GPU too
    same_4bit_math_on_every_cpu(base)
    plain = PeftModel.from_pretrained(base, str(root / "sft"))
    assert torch.allclose(logits(plain, batch), logits(tuned.model, batch), atol=1e-5)


def test_a_continued_adapter_must_keep_its_shape(chain):
    recipe, root, _, mid = chain
    changed = recipe.model_copy(update={"sft": recipe.sft.model_copy(update={
        "lora": recipe.sft.lora.model_copy(update={"r": 8})})})
    with pytest.raises(ConfigError, match=r"(?s)continues that mid run's adapter.*sft\.lora\.r"):
        run_stage("sft", changed, root / "sft-r8", init_from=mid.output)


def test_align_takes_no_init_from(chain):
    recipe, root, aligned, _ = chain
    with pytest.raises(ConfigError, match="starts from the backbone"):
        run_stage("align", recipe, root / "again", init_from=aligned.output)
