"""Backbone registry, tiny twins, role resolution, and the offline failure of real hub backbones."""

from __future__ import annotations

import time

import pytest
from safetensors.torch import load_file
from torch import nn

from ecomtune.backbones.loading import check_available
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
    first = ensure_tiny(alias, spec.tiny_builder, seed=5, cache_dir=tmp_path / "a")
    second = ensure_tiny(alias, spec.tiny_builder, seed=5, cache_dir=tmp_path / "b")
    other = ensure_tiny(alias, spec.tiny_builder, seed=6, cache_dir=tmp_path / "c")
    weights_a, weights_b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all((weights_a[k] == weights_b[k]).all() for k in weights_a)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    weights_c = load_file(other / "model.safetensors")
    assert any(not (weights_a[k] == weights_c[k]).all() for k in weights_a)
    assert not list((tmp_path / "a").glob(".*"))  # no half-built temporary folders left


@pytest.mark.parametrize("spec", FAMILIES, ids=lambda s: s.family)
def test_roles_resolve_on_the_real_model_class(spec):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(resolve_backbone(f"tiny-{spec.family}").source)
    roles = resolve_roles(model, spec)
    assert roles.projector.endswith("merger") and roles.projector.startswith(roles.vision_tower)
    assert roles.component_of(f"{roles.projector}.mlp.0.weight") == "projector"
    assert roles.component_of(f"{roles.vision_tower}.blocks.0.attn.qkv.weight") == "vision_tower"
    assert roles.component_of(f"base_model.model.{roles.language_model}.layers.0.self_attn.q_proj.lora_A.default"
                              ".weight") == "lora"
    import re

    pattern = re.compile(lora_target_regex(roles.language_model, spec.lora_targets))
    matched = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n)]
    assert matched and all(n.startswith(roles.language_model + ".") for n in matched)
    assert len(matched) == 7 * model.config.text_config.num_hidden_layers


def test_role_miss_names_the_paths_tried():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(BackboneError) as caught:
        resolve_roles(model, FAMILIES[0])
    text = caught.value.render()
    assert "model.visual.merger" in text and "visual.merger" in text and "projector" in text


def test_backbones_command_prints_the_registry():
    result = run_cli("backbones")
    assert result.returncode == 0
    for needle in ("qwen2-vl", "Qwen/Qwen2-VL-2B-Instruct", "tiny-qwen2.5-vl", "model.visual.merger", "q_proj"):
        assert needle in result.stdout
