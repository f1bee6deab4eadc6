"""`ecomtune plan`: token budgets measured with the real processor, padding, and the memory estimate."""

from __future__ import annotations

import json

import pytest
import torch

from ecomtune.config.recipe_files import load_recipe
from ecomtune.train.memory import GIB, ModelShape, TrainShape, advice, estimate
from ecomtune.train.plan import padding_fraction, percentile, plan_stage
from tests.conftest import REPO, run_cli


def test_percentile_is_nearest_rank():
    values = list(range(1, 21))  # 1..20
    assert percentile(values, 95) == 19 and percentile(values, 50) == 10 and percentile(values, 100) == 20
    assert percentile([7], 95) == 7


def test_padding_fraction_by_hand():
    # one batch of [10, 30]: 2 x 30 = 60 positions, 40 useful -> 1/3 padding; batches of one never pad
    assert padding_fraction([10, 30], batch_size=2) == pytest.approx(1 / 3)
    assert padding_fraction([10, 30, 50], batch_size=1) == 0.0


TINY_SHAPE = ModelShape(lm_linear=1000, lm_rest=100, vision=50, projector=10, layers=2, hidden=8, kv_width=4,
                        intermediate=16, vocab=32, vision_hidden=4, merge=4)


def test_memory_terms_by_hand():
    step = TrainShape(batch_size=2, seq_len=5, image_tokens=3, lora_params=20, projector_trainable=True,
                      load_in_4bit=True, double_quant=True, quantize_vision=False, dtype_bytes=2,
                      gradient_checkpointing=True, optimizer="adamw")
    terms = estimate(TINY_SHAPE, step)
    assert terms["weights"] == pytest.approx(1000 * 0.5159 + 100 * 2 + 50 * 2 + 10 * 4 + 20 * 4)
    assert terms["gradients"] == 30 * 4 and terms["optimizer"] == 30 * 8
    per_layer = (6 * 8 + 2 * 4 + 5 * 16) * 2  # 272 bytes per token
    assert terms["activations"] == 10 * 2 * 2 * 8 * 2 + 10 * per_layer
    assert terms["logits"] == 10 * 32 * 10 and terms["vision"] == 3 * 4 * 4 * 2 * 8
    tiled = estimate(TINY_SHAPE, TrainShape(**{**step.__dict__, "full_logits": False}))
    assert tiled["logits"] == 10 * 32 * 4, "TRL's fused head: at most one float32 tile of answer positions"
    subtotal = sum(v for k, v in terms.items() if k not in ("overhead", "total"))
    assert terms["total"] == pytest.approx(subtotal * 1.08 + 0.8 * GIB)
    no_checkpointing = estimate(TINY_SHAPE, TrainShape(**{**step.__dict__, "gradient_checkpointing": False}))
    assert no_checkpointing["activations"] == 2 * 10 * per_layer


def qwen2_vl_7b_shape() -> ModelShape:
    """Qwen2-VL-7B's shape from its real config class, weightless (published dimensions)."""
    from transformers import AutoModelForImageTextToText, Qwen2VLConfig

    from ecomtune.backbones.families import QWEN2_VL
    from ecomtune.backbones.spec import resolve_roles
    from ecomtune.train.plan import model_shape

    config = Qwen2VLConfig(text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                            num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
                           vision_config=dict(hidden_size=3584))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    assert 8.2e9 < sum(p.numel() for p in model.parameters()) < 8.4e9  # Qwen2-VL-7B has 8.29B parameters
    return model_shape(model, config, resolve_roles(model, QWEN2_VL))


def test_the_shipped_7b_recipe_fits_24_gb_only_with_gradient_checkpointing():
    recipe = load_recipe(REPO / "recipes" / "qwen2-vl.yaml")
    shape = qwen2_vl_7b_shape()
    train = recipe.sft.train
    step = TrainShape(batch_size=train.batch_size, seq_len=recipe.sft.max_length, image_tokens=train.batch_size * 512,
                      lora_params=40_370_176, projector_trainable=True, load_in_4bit=True, double_quant=True,
                      quantize_vision=False, dtype_bytes=2, gradient_checkpointing=train.gradient_checkpointing,
                      optimizer="adamw8bit", full_logits=train.loss_average == "sample")
    with_checkpointing = estimate(shape, step)
    assert 4 * GIB < with_checkpointing["weights"] < 8 * GIB, "a 7B in nf4 plus a bf16 ViT and embeddings"
    assert with_checkpointing["total"] < 24 * GIB
    without = estimate(shape, TrainShape(**{**step.__dict__, "gradient_checkpointing": False}))
    assert without["total"] > 24 * GIB and advice(without)[0].startswith("activations")


@pytest.mark.slow
def test_plan_measures_every_sample_with_the_real_processor(tmp_path):
    from ecomtune.backbones.model_loading import load_processor
    from ecomtune.backbones.registry import resolve_backbone
    from ecomtune.data.batches.collator import count_tokens
    from ecomtune.data.canonical_file import load_canonical_file

    recipe = load_recipe(REPO / "recipes" / "tiny-qwen2-vl.yaml",
                         ["sft.max_length=200", "sft.on_overlong=drop", "sft.images.max_images=3"])
    report = plan_stage(recipe, "sft")
    processor = load_processor(resolve_backbone("tiny-qwen2-vl"))
    # the shipped sft data is a mixture: every instruction once, every compliance record four times over
    # (first:400%), the 120 replay rows once
    assert [source.sampling for source in recipe.sft.data] == ["all", "first:400%", "all"]
    sources, passes = [source.path for source in recipe.sft.data], (1, 4, 1)
    samples = [s for path, times in zip(sources, passes, strict=True)
               for s in load_canonical_file(path, images=recipe.sft.images) for _ in range(times)]
    lengths = sorted(count_tokens(processor, s) for s in samples)
    assert report["samples"] == len(samples)
    assert (report["tokens"]["min"], report["tokens"]["max"]) == (lengths[0], lengths[-1])
    assert report["over_max_length"] == sum(n > 200 for n in lengths)
    listed = [s for path, times in zip(sources, passes, strict=True) for s in load_canonical_file(path)
              for _ in range(times)]
    assert report["over_image_cap"] == sum(len(s.images) > 3 for s in listed) > 0
    assert 0 < report["padding"]["fraction"] < 1 and report["memory"]["fits"]


@pytest.mark.slow
def test_plan_command_prints_the_budget_and_writes_json(tmp_path):
    out = tmp_path / "plan.json"
    result = run_cli("plan", "recipes/tiny-qwen2-vl.yaml", "--set", "sft.gpu_memory_gb=0.5", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tokens per sample" in result.stdout and "over budget" in result.stdout
    report = json.loads(out.read_text())
    assert report["memory"]["fits"] is False and report["memory"]["advice"]
    assert "mixture" in result.stdout and len(report["mixture"]) == 3, "instructions, compliance, general replay"
    assert sum(m["share"] for m in report["mixture"]) == pytest.approx(1.0)
    bad = run_cli("plan", "recipes/tiny-qwen2-vl.yaml", "--stage", "final")
    assert bad.returncode == 2 and "--stage align or mid or sft" in bad.stderr


def test_plan_with_packing_counts_rows_of_max_length(catalog):
    common = [f"sft.data={catalog['instruct']}", "sft.max_length=512", "sft.train.batch_size=8"]
    recipe = load_recipe(None, [*common, "sft.packing=true"])
    report = plan_stage(recipe, "sft")
    packing = report["packing"]
    assert packing["samples"] == report["samples"] - report["over_max_length"]
    assert report["memory"]["step"]["seq_len"] == 512  # every row is planned at the full row length
    assert report["padding"]["packed"] and report["padding"]["fraction"] == pytest.approx(1 - packing["fill"])
    unpacked = plan_stage(load_recipe(None, common), "sft")
    assert unpacked["packing"] is None and report["padding"]["fraction"] < unpacked["padding"]["fraction"]
