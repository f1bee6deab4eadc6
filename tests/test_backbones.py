"""Backbone registry, tiny twins, role resolution, and the offline failure of real hub backbones."""

from __future__ import annotations

import time

import pytest
from safetensors.torch import load_file
from torch import nn

from ecomtune.backbones.model_loading import check_available
from ecomtune.backbones.registry import FAMILIES, aliases, resolve_backbone
from ecomtune.backbones.spec import lora_target_regex, resolve_roles
from ecomtune.backbones.tiny import ensure_tiny
from ecomtune.errors import BackboneError
from tests.conftest import run_cli


def test_aliases_map_to_instruct_checkpoints():
    table = aliases()
    assert table["qwen2-vl-2b"][1] == "Qwen/Qwen2-VL-2B-Instruct"
    assert table["qwen2-vl-7b"][1] == "Qwen/Qwen2-VL-7B-Instruct"
    assert table["qwen2.5-vl-3b"][1] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert table["qwen2.5-vl-7b"][1] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert table["qwen2-vl"][1] and table["qwen2.5-vl"][1]
    assert table["tiny-qwen2-vl"][1] is None and table["tiny-qwen2.5-vl"][1] is None


def test_unknown_alias_suggests_the_closest():
    with pytest.raises(BackboneError, match="did you mean 'qwen2-vl'"):
        resolve_backbone("qwen2vl")


def test_missing_folder_and_folder_without_config(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        resolve_backbone(str(tmp_path / "nope"))
    with pytest.raises(BackboneError, match=r"no config\.json"):
        resolve_backbone(str(tmp_path))


def test_local_folder_resolves_to_its_family():
    folder = resolve_backbone("tiny-qwen2.5-vl").source
    assert resolve_backbone(folder).spec.family == "qwen2.5-vl"


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_hub_alias_fails_fast_offline_naming_local_alternatives(monkeypatch, tmp_path, env):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    backbone = resolve_backbone("qwen2-vl-2b")
    started = time.monotonic()
    with pytest.raises(BackboneError) as caught:
        check_available(backbone)
    assert time.monotonic() - started < 10
    text = caught.value.render()
    assert "Qwen/Qwen2-VL-2B-Instruct" in text and "tiny-qwen2-vl" in text and "local model folder" in text


def test_cli_offline_hub_backbone_is_one_clear_message(tmp_path, catalog):
    result = run_cli("align", "--backbone", "qwen2-vl", "--data", str(catalog["captions"]),
                     "--output", str(tmp_path / "run"), env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "not reachable" in result.stderr and "tiny-qwen2-vl" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("alias", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_tiny_twins_are_deterministic_for_a_seed(tmp_path, alias):
    spec = aliases()[alias][0]
    first = ensure_tiny(alias, spec.tiny, seed=5, cache_dir=tmp_path / "a")
    second = ensure_tiny(alias, spec.tiny, seed=5, cache_dir=tmp_path / "b")
    other = ensure_tiny(alias, spec.tiny, seed=6, cache_dir=tmp_path / "c")
    weights_a, weights_b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all((weights_a[k] == weights_b[k]).all() for k in weights_a)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    weights_c = load_file(other / "model.safetensors")
    assert any(not (weights_a[k] == weights_c[k]).all() for k in weights_a)
    assert not list((tmp_path / "a").glob(".*"))  # no half-built temporary folders left


@pytest.mark.parametrize("spec", [s for s in FAMILIES if s.family.startswith("qwen2")], ids=lambda s: s.family)
def test_qwen_roles_resolve_on_the_real_model_class(spec):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(resolve_backbone(f"tiny-{spec.family}").source)
    roles = resolve_roles(model, spec)
    (projector,) = roles.projector
    assert projector.endswith("merger") and projector.startswith(roles.vision_tower)
    assert roles.component_of(f"{projector}.mlp.0.weight") == "projector"
    assert roles.component_of(f"{roles.vision_tower}.blocks.0.attn.qkv.weight") == "vision_tower"
    assert roles.component_of(f"base_model.model.{roles.language_model}.layers.0.self_attn.q_proj.lora_A.default"
                              ".weight") == "lora"
    import re

    pattern = re.compile(lora_target_regex(roles.language_model, spec.lora_targets))
    matched = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n)]
    assert matched and all(n.startswith(roles.language_model + ".") for n in matched)
    assert len(matched) == 7 * model.config.text_config.num_hidden_layers


def test_role_miss_names_the_paths_tried_and_the_recipe_key():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(BackboneError) as caught:
        resolve_roles(model, FAMILIES[0])
    text = caught.value.render()
    assert "model.visual.merger" in text and "visual.merger" in text and "projector" in text
    assert "backbone.projector" in text


def test_backbones_command_prints_the_registry():
    result = run_cli("backbones")
    assert result.returncode == 0
    for needle in ("qwen2-vl", "Qwen/Qwen2-VL-2B-Instruct", "tiny-qwen2.5-vl", "model.visual.merger", "q_proj"):
        assert needle in result.stdout


@pytest.fixture(scope="module")
def unregistered_model(tmp_path_factory):
    """A VipLLaVA model: a real transformers VLM whose model_type (vipllava) is in no ecomtune family."""
    from dataclasses import replace

    from ecomtune.backbones.families import LLAVA
    from ecomtune.backbones.tiny import build_tiny

    folder = tmp_path_factory.mktemp("unregistered") / "vipllava"
    build_tiny(replace(LLAVA.tiny, config_class="VipLlavaConfig", config_extra={"vision_feature_layers": [-1, -2]}),
               folder, seed=0)
    return folder


def test_inspect_an_unregistered_model_finds_its_roles(unregistered_model):
    assert resolve_backbone(str(unregistered_model)).spec.family == "generic"
    result = run_cli("backbones", "--inspect", str(unregistered_model))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "VipLlavaForConditionalGeneration" in result.stdout and "inspection (generic fallback)" in result.stdout
    for path in ("model.vision_tower", "model.multi_modal_projector", "model.language_model"):
        assert path in result.stdout


@pytest.mark.slow
def test_unregistered_model_trains_with_qlora_through_the_generic_fallback(unregistered_model, catalog, tmp_path):
    from ecomtune.config.recipe_files import load_recipe
    from ecomtune.train.stages import run_sft
    from tests.conftest import quick_overrides

    recipe = load_recipe(None, [f"backbone.name={unregistered_model}", f"sft.data={catalog['instruct']}",
                                "sft.max_length=4096", *quick_overrides("sft", steps=2)])
    result = run_sft(recipe, tmp_path / "sft")
    trained = {r["component"]: r["trainable"] for r in result.manifest["parameters"]}
    assert trained["lora"] > 0 and trained["projector"] > 0 and trained["vision_tower"] == 0
    assert list(result.manifest["roles"]["projector"]) == ["model.multi_modal_projector"]
    assert (result.output / "adapter_model.safetensors").is_file()


def test_roles_that_cannot_be_found_name_the_candidates_and_the_recipe_keys():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ecomtune.backbones.spec import GENERIC, RoleOverrides

    with torch.device("meta"):  # a text-only model: a language model, nothing that looks like vision
        model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                             num_attention_heads=4, vocab_size=100))
    with pytest.raises(BackboneError) as caught:
        resolve_roles(model, GENERIC)
    text = caught.value.render()
    assert "backbone.vision_tower" in text and "backbone.projector" in text
    assert "'model.embed_tokens'" in text and "'lm_head'" in text, "the module paths it saw"
    with pytest.raises(BackboneError, match="not a module of LlamaForCausalLM"):
        resolve_roles(model, GENERIC, RoleOverrides("model.vision", ("model.projector",), "model"))
    roles = resolve_roles(model, GENERIC, RoleOverrides("model.embed_tokens", ("model.norm",), "model"))
    assert roles.projector == ("model.norm",) and roles.language_model == "model"


def test_4bit_layers_compute_in_the_compute_dtype_and_keep_gradients_after_eval():
    """A 4-bit layer of a loaded model computes as on a GPU (dequantize, multiply in the compute dtype) on every
    CPU, before and after an eval forward; bitsandbytes' bfloat16 repacking on AVX512-BF16 CPUs would break both
    (a float32 export then fails its verification, and training after an eval loss loses input gradients)."""
    import bitsandbytes as bnb
    import torch

    from ecomtune.backbones.model_loading import load_model
    from ecomtune.config.schema import QuantSettings

    model = load_model(resolve_backbone("tiny-qwen2-vl"), QuantSettings(load_in_4bit=True, compute_dtype="float32"))
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.linear(x, weight, layer.bias)
    layer.eval()
    with torch.no_grad():
        assert torch.allclose(layer(x), expected, rtol=0, atol=1e-5)
    layer.train()
    inputs = (x * 1.0).requires_grad_()
    out = layer(inputs)
    assert torch.allclose(out, expected, rtol=0, atol=1e-5)
    out.sum().backward()
    assert inputs.grad is not None and torch.allclose(inputs.grad, weight.sum(0).expand_as(x), atol=1e-5)
