"""The published dimensions of real checkpoints, as data: what a real-size twin (`sized.py`) is built from.

Each entry holds the numbers, as the checkpoint's own files on the Hugging Face hub publish them, that decide
its size and speed: `config.json` (text and vision towers, projector), `preprocessor_config.json` (the image
processor's defaults, which decide image token counts) and the processor's own settings. The model's
published parameter count (the hub's safetensors metadata, shown on the model page as "Model size") is kept
beside them, so a test can check that the dimensions really are that checkpoint's: the twin built from them
must have exactly that many parameters (tests/test_sized.py, on the meta device).

Only numbers are kept; token ids are not (a twin's tokenizer is trained locally, so its ids differ) and
neither are the weights. Sources are the files named in `config_source`, at the repository's main revision; they
were transcribed, not downloaded here, and the exact parameter-count match is what vouches for them (a wrong
width, depth or vocabulary changes the count). LLaVA-OneVision-0.5B's text vocabulary is 151936 (Qwen2's); with
152000 the count is 57,344 (64 rows of 896) over the published one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HUB = "https://huggingface.co/{}/blob/main/{}"
SAFETENSORS_COUNT = "hub safetensors metadata (model page, 'Model size'; total of model*.safetensors tensors)"


@dataclass(frozen=True)
class PublishedCheckpoint:
    """One checkpoint's published dimensions and parameter count."""

    hub_id: str
    config_class: str  # the transformers config class of its config.json `model_type`
    text: dict[str, Any] = field(compare=False)  # text_config
    vision: dict[str, Any] = field(compare=False)  # vision_config
    parameters: int  # published total parameter count
    parameters_source: str
    image_processor: tuple[str, dict[str, Any]] = field(compare=False)  # class, preprocessor_config.json values
    parameters_rounding: int = 1  # 1: the exact count; else the published figure is rounded to this many
    processor_class: str | None = None  # when it differs from the family twin's (SmolVLM v1 is an Idefics3)
    processor_extra: dict[str, Any] = field(default_factory=dict, compare=False)  # processor_config.json
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # top-level config.json keys
    video_processor: tuple[str, dict[str, Any]] | None = None
    tie_word_embeddings: bool = False
    note: str = ""

    @property
    def config_source(self) -> str:
        return ", ".join(HUB.format(self.hub_id, f) for f in ("config.json", "preprocessor_config.json"))


# Qwen2-VL and Qwen2.5-VL ship min_pixels 3136 (56 x 56) and max_pixels 12845056 (16384 x 28 x 28): a
# 1200 x 1600 photo is not shrunk at all by default (2451 image tokens); recipes lower max_pixels.
QWEN2_PROCESSOR = ("Qwen2VLImageProcessor", {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14,
                                             "temporal_patch_size": 2, "merge_size": 2})
QWEN2_ROPE = {"type": "mrope", "mrope_section": [16, 24, 24]}
QWEN2_5_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=112,
                      fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu", tokens_per_second=2)
QWEN2_VISION = dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, in_chans=3, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2)
# Qwen3-VL: 16 px patches, its size dict in pixels (shortest_edge = min_pixels, longest_edge = max_pixels).
QWEN3_PROCESSOR = ("Qwen2VLImageProcessor", {"size": {"shortest_edge": 65536, "longest_edge": 16777216},
                                             "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
                                             "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
QWEN3_ROPE = {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True}
QWEN3_TEXT = dict(head_dim=128, hidden_act="silu", rope_theta=5000000, max_position_embeddings=262144,
                  rope_scaling=QWEN3_ROPE)
QWEN3_VISION = dict(patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_heads=16, in_channels=3,
                    hidden_act="gelu_pytorch_tanh", num_position_embeddings=2304)
# SigLIP so400m/14 at 384 px: the vision tower of SmolVLM, LLaVA-OneVision and (at 896 px) Gemma 3.
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                     patch_size=14, image_size=384)


def _qwen2(hub_id: str, text: dict, out_width: int, parameters: int, tie: bool) -> PublishedCheckpoint:
    return PublishedCheckpoint(
        hub_id=hub_id, config_class="Qwen2VLConfig",
        text=dict(text, rope_scaling=QWEN2_ROPE, rope_theta=1000000.0, max_position_embeddings=32768),
        vision=dict(QWEN2_VISION, hidden_size=out_width), parameters=parameters, parameters_source=SAFETENSORS_COUNT,
        image_processor=QWEN2_PROCESSOR, tie_word_embeddings=tie)


def _qwen2_5(hub_id: str, text: dict, parameters: int, tie: bool) -> PublishedCheckpoint:
    return PublishedCheckpoint(
        hub_id=hub_id, config_class="Qwen2_5_VLConfig",
        text=dict(text, rope_scaling=QWEN2_ROPE, rope_theta=1000000.0, max_position_embeddings=128000),
        vision=dict(QWEN2_5_VISION, out_hidden_size=text["hidden_size"]), parameters=parameters,
        parameters_source=SAFETENSORS_COUNT, image_processor=QWEN2_PROCESSOR, tie_word_embeddings=tie)


def _qwen3(hub_id: str, text: dict, vision: dict, parameters: int, tie: bool) -> PublishedCheckpoint:
    return PublishedCheckpoint(
        hub_id=hub_id, config_class="Qwen3VLConfig", text=dict(QWEN3_TEXT, **text),
        vision=dict(QWEN3_VISION, out_hidden_size=text["hidden_size"], **vision), parameters=parameters,
        parameters_source=SAFETENSORS_COUNT, image_processor=QWEN3_PROCESSOR, tie_word_embeddings=tie)


QWEN_2B_TEXT = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                    num_key_value_heads=2, vocab_size=151936)
QWEN_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4, vocab_size=152064)

CHECKPOINTS: dict[str, PublishedCheckpoint] = {c.hub_id: c for c in (
    _qwen2("Qwen/Qwen2-VL-2B-Instruct", QWEN_2B_TEXT, 1536, 2_208_985_600, tie=True),
    _qwen2("Qwen/Qwen2-VL-7B-Instruct", QWEN_7B_TEXT, 3584, 8_291_375_616, tie=False),
    _qwen2_5("Qwen/Qwen2.5-VL-3B-Instruct",
             dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, vocab_size=151936), 3_754_622_976, tie=True),
    _qwen2_5("Qwen/Qwen2.5-VL-7B-Instruct", QWEN_7B_TEXT, 8_292_166_656, tie=False),
    _qwen3("Qwen/Qwen3-VL-2B-Instruct",
           dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                num_key_value_heads=8, vocab_size=151936),
           dict(depth=24, hidden_size=1024, intermediate_size=4096, deepstack_visual_indexes=[5, 11, 17]),
           2_127_532_032, tie=True),
    _qwen3("Qwen/Qwen3-VL-4B-Instruct",
           dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=151936),
           dict(depth=24, hidden_size=1024, intermediate_size=4096, deepstack_visual_indexes=[5, 11, 17]),
           4_437_815_808, tie=True),
    _qwen3("Qwen/Qwen3-VL-8B-Instruct",
           dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=151936),
           dict(depth=27, hidden_size=1152, intermediate_size=4304, deepstack_visual_indexes=[8, 16, 24]),
           8_767_123_696, tie=False),
    PublishedCheckpoint(
        hub_id="HuggingFaceTB/SmolVLM-Instruct", config_class="Idefics3Config", processor_class="Idefics3Processor",
        text=dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                  num_attention_heads=32, num_key_value_heads=32, vocab_size=49155, rope_theta=273768.0,
                  max_position_embeddings=16384),
        vision=dict(SIGLIP_SO400M), extra={"scale_factor": 3},
        parameters=2_246_272_880, parameters_source=SAFETENSORS_COUNT,
        image_processor=("Idefics3ImageProcessor", {"size": {"longest_edge": 1536}, "max_image_size":
                                                    {"longest_edge": 384}, "do_image_splitting": True,
                                                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}),
        processor_extra={"image_seq_len": 81},
        note="SmolVLM (v1) is an Idefics3 checkpoint (model_type idefics3); SmolVLM2 has model_type smolvlm"),
    PublishedCheckpoint(
        hub_id="google/gemma-3-4b-it", config_class="Gemma3Config",
        text=dict(model_type="gemma3_text", hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208,
                  sliding_window=1024, query_pre_attn_scalar=256, rope_theta=1000000.0,
                  rope_scaling={"rope_type": "linear", "factor": 8.0}, max_position_embeddings=131072),
        vision=dict(SIGLIP_SO400M, model_type="siglip_vision_model", image_size=896, vision_use_head=False),
        extra={"mm_tokens_per_image": 256}, parameters=4_300_079_472, parameters_source=SAFETENSORS_COUNT,
        image_processor=("Gemma3ImageProcessor", {"size": {"height": 896, "width": 896}, "do_pan_and_scan": False,
                                                  "pan_and_scan_max_num_crops": 4, "image_mean": [0.5, 0.5, 0.5],
                                                  "image_std": [0.5, 0.5, 0.5]}),
        processor_extra={"image_seq_length": 256}, tie_word_embeddings=True),
    PublishedCheckpoint(
        hub_id="llava-hf/llava-onevision-qwen2-0.5b-ov-hf", config_class="LlavaOnevisionConfig",
        text=dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, rope_theta=1000000.0,
                  max_position_embeddings=32768),
        # the hub config keeps 26 of SigLIP's 27 layers (features come from the last kept one) and no head
        vision=dict(SIGLIP_SO400M, model_type="siglip_vision_model", num_hidden_layers=26, vision_use_head=False),
        extra={"vision_feature_layer": -1, "vision_feature_select_strategy": "full",
               "vision_aspect_ratio": "anyres_max_9",
               "image_grid_pinpoints": [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]},
        parameters=893_618_208, parameters_source=SAFETENSORS_COUNT,
        image_processor=("LlavaOnevisionImageProcessor", {
            "size": {"height": 384, "width": 384},
            "image_grid_pinpoints": [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)],
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}),
        video_processor=("LlavaOnevisionVideoProcessor", {"size": {"height": 384, "width": 384}}),
        processor_extra={"num_image_tokens": 729, "vision_feature_select_strategy": "full"},
        tie_word_embeddings=True),
    PublishedCheckpoint(
        hub_id="OpenGVLab/InternVL3-2B-hf", config_class="InternVLConfig",
        text=dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, vocab_size=151674, rope_theta=1000000.0,
                  max_position_embeddings=32768),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=[448, 448], patch_size=[14, 14], use_qk_norm=False, layer_scale_init_value=0.1,
                    norm_type="layer_norm", use_mean_pooling=True),
        extra={"downsample_ratio": 0.5, "projector_hidden_act": "gelu", "vision_feature_layer": -1},
        parameters=2_090_000_000, parameters_rounding=10_000_000,
        parameters_source="hub model page, 'Model size' 2.09B (rounded to 10M; no exact figure on record here)",
        image_processor=("GotOcr2ImageProcessor", {"size": {"height": 448, "width": 448}, "crop_to_patches": False,
                                                   "min_patches": 1, "max_patches": 12}),
        video_processor=("InternVLVideoProcessor", {"size": {"height": 448, "width": 448}}),
        processor_extra={"image_seq_length": 256}),
)}
