"""Every VLM family ecomtune knows, as data: where its parts live, how it sees images, its tiny twin.

Module paths are those of transformers 5 (vision tower, projector and language model nested under
`model.`); Qwen2-VL and Qwen2.5-VL keep their 4.x paths as second candidates. Each family's tiny
twin uses the family's real config, model and processor classes at toy sizes (see `tiny.py`).
Image sizes are chosen so that every twin sees an image as 4 to ~100 tokens.
"""

from __future__ import annotations

from ecomtune.backbones.spec import LLAMA_LINEARS, BackboneSpec
from ecomtune.backbones.tiny import (
    QWEN_TOKENS,
    TINY_MAX_PIXELS,
    TINY_MIN_PIXELS,
    TINY_MROPE,
    TINY_VISION_WIDTH,
    TinyTwin,
)

W = TINY_VISION_WIDTH
# A small ViT in the layout of CLIP / SigLIP / Idefics3 / InternVL vision configs (56 px, 14 px patches: 4x4).
VIT = dict(hidden_size=W, intermediate_size=2 * W, num_hidden_layers=2, num_attention_heads=2, image_size=56,
           patch_size=14)
CLIP_VISION_LORA = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
GRID = [[56, 56], [56, 112], [112, 56], [112, 112]]  # LLaVA-NeXT style any-resolution grid, at toy size
# LLaVA-1.5 / NeXT processors: 14 px patches, the CLS feature dropped ("default") but counted as an extra token.
CLIP_PROCESSOR = {"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}
TILE_TOKENS = tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))
QWEN_PIXELS = {"max_pixels": ("max_pixels", "size.longest_edge"), "min_pixels": ("min_pixels", "size.shortest_edge")}
# Qwen2-VL's smart_resize (also used for Qwen2.5-VL and Qwen3-VL images) raises for an aspect ratio above 200:1.
QWEN_MAX_ASPECT = 200
QWEN_IDS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
            "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}


def _qwen_twin(config: str, processor: str, vision: dict, template: str = "trl:qwen2_5_vl.jinja",
               text: dict | None = None, image_kwargs: dict | None = None, video: str = "Qwen2VLVideoProcessor"):
    """Qwen VL twins share tokens, image processor and (for 2 and 2.5) a byte-identical chat template."""
    return TinyTwin(
        config_class=config, processor_class=processor,
        image_processor=("Qwen2VLImageProcessor", image_kwargs or
                         {"min_pixels": TINY_MIN_PIXELS, "max_pixels": TINY_MAX_PIXELS}),
        vision=vision, special_tokens=QWEN_TOKENS, eos="<|im_end|>", pad="<|endoftext|>", chat_template=template,
        text=text or {"rope_scaling": TINY_MROPE}, config_token_ids=QWEN_IDS,
        video_processor=(video, {}),  # the class requires one even for image-only use
    )


QWEN2_VL = BackboneSpec(
    family="qwen2-vl", title="Qwen2-VL", model_types=("qwen2_vl",),
    hub_ids={"qwen2-vl": "Qwen/Qwen2-VL-7B-Instruct", "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
             "qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct"},
    vision_tower=("model.visual", "visual"), projector=("model.visual.merger", "visual.merger"),
    language_model=("model.language_model", "model"), vision_lora_targets=("qkv", "proj", "fc1", "fc2"),
    image_placeholder="<|image_pad|>", image_knobs=QWEN_PIXELS,
    packing="mrope", max_aspect_ratio=QWEN_MAX_ASPECT,
    tiny=_qwen_twin("Qwen2VLConfig", "Qwen2VLProcessor",
                    dict(depth=1, embed_dim=W, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                         spatial_merge_size=2, temporal_patch_size=2, in_chans=3)),
)

QWEN2_5_VL = BackboneSpec(
    family="qwen2.5-vl", title="Qwen2.5-VL", model_types=("qwen2_5_vl",),
    hub_ids={"qwen2.5-vl": "Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
             "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct"},
    vision_tower=("model.visual", "visual"), projector=("model.visual.merger", "visual.merger"),
    language_model=("model.language_model", "model"), vision_lora_targets=("qkv", "proj", "gate_proj", "up_proj"),
    image_placeholder="<|image_pad|>", image_knobs=QWEN_PIXELS,
    packing="mrope", max_aspect_ratio=QWEN_MAX_ASPECT,
    tiny=_qwen_twin("Qwen2_5_VLConfig", "Qwen2_5_VLProcessor",
                    dict(depth=2, hidden_size=W, intermediate_size=2 * W, num_heads=2, patch_size=14,
                         spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=56,
                         fullatt_block_indexes=[1], out_hidden_size=64)),
)

QWEN3_VL = BackboneSpec(
    family="qwen3-vl", title="Qwen3-VL", model_types=("qwen3_vl",),
    hub_ids={"qwen3-vl": "Qwen/Qwen3-VL-8B-Instruct", "qwen3-vl-2b": "Qwen/Qwen3-VL-2B-Instruct",
             "qwen3-vl-4b": "Qwen/Qwen3-VL-4B-Instruct", "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Instruct"},
    vision_tower=("model.visual",), projector=("model.visual.merger",),
    projector_extra=("model.visual.deepstack_merger_list",), language_model=("model.language_model",),
    vision_lora_targets=("qkv", "proj", "linear_fc1", "linear_fc2"), image_placeholder="<|image_pad|>",
    image_knobs={"max_pixels": ("size.longest_edge",), "min_pixels": ("size.shortest_edge",)},
    packing="mrope", max_aspect_ratio=QWEN_MAX_ASPECT,
    tiny=_qwen_twin("Qwen3VLConfig", "Qwen3VLProcessor",
                    dict(depth=2, hidden_size=W, intermediate_size=2 * W, num_heads=2, patch_size=16,
                         spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                         deepstack_visual_indexes=[0], num_position_embeddings=64),
                    template="trl:qwen3_vl.jinja",
                    text={"head_dim": 16, "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                                           "mrope_interleaved": True}},
                    image_kwargs={"patch_size": 16, "size": {"shortest_edge": 64 * 64, "longest_edge": 128 * 128}},
                    video="Qwen3VLVideoProcessor"),
)

LLAVA = BackboneSpec(
    family="llava", title="LLaVA-1.5", model_types=("llava",),
    hub_ids={"llava-1.5": "llava-hf/llava-1.5-7b-hf", "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
             "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf"},
    vision_tower=("model.vision_tower",), projector=("model.multi_modal_projector",),
    language_model=("model.language_model",), vision_lora_targets=CLIP_VISION_LORA,
    max_images=1,  # trained on single-image conversations; several images per prompt are out of distribution
    packing="1d",
    tiny=TinyTwin(
        config_class="LlavaConfig", processor_class="LlavaProcessor",
        image_processor=("CLIPImageProcessor", {"size": {"shortest_edge": 56},
                                                "crop_size": {"height": 56, "width": 56}}),
        vision={"model_type": "clip_vision_model", **VIT, "projection_dim": 64},
        special_tokens=("<s>", "</s>", "<pad>", "<image>"), bos="<s>", eos="</s>", pad="<pad>", adds_bos=True,
        named_tokens={"image_token": "<image>"}, chat_template="ecomtune:llava.jinja",
        text={"model_type": "llama"},
        config_token_ids={"image_token_id": "<image>"},
        processor_extra=CLIP_PROCESSOR,
    ),
)

LLAVA_NEXT = BackboneSpec(
    family="llava-next", title="LLaVA-NeXT (1.6)", model_types=("llava_next",),
    hub_ids={"llava-next": "llava-hf/llava-v1.6-mistral-7b-hf",
             "llava-next-mistral-7b": "llava-hf/llava-v1.6-mistral-7b-hf",
             "llava-next-vicuna-7b": "llava-hf/llava-v1.6-vicuna-7b-hf"},
    vision_tower=("model.vision_tower",), projector=("model.multi_modal_projector",),
    language_model=("model.language_model",), vision_lora_targets=CLIP_VISION_LORA,
    packing="1d",
    tiny=TinyTwin(
        config_class="LlavaNextConfig", processor_class="LlavaNextProcessor",
        image_processor=("LlavaNextImageProcessor", {"size": {"shortest_edge": 56}, "image_grid_pinpoints": GRID,
                                                     "crop_size": {"height": 56, "width": 56}}),
        vision={"model_type": "clip_vision_model", **VIT, "projection_dim": 64},
        special_tokens=("<s>", "</s>", "<pad>", "<image>"), bos="<s>", eos="</s>", pad="<pad>", adds_bos=True,
        named_tokens={"image_token": "<image>"}, chat_template="trl:llava_next.jinja",
        text={"model_type": "mistral"},
        config_token_ids={"image_token_id": "<image>"}, config_extra={"image_grid_pinpoints": GRID},
        processor_extra=CLIP_PROCESSOR,
    ),
)

LLAVA_ONEVISION = BackboneSpec(
    family="llava-onevision", title="LLaVA-OneVision", model_types=("llava_onevision",),
    hub_ids={"llava-onevision": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
             "llava-onevision-0.5b": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
             "llava-onevision-7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf"},
    vision_tower=("model.vision_tower",), projector=("model.multi_modal_projector",),
    language_model=("model.language_model",), vision_lora_targets=CLIP_VISION_LORA,
    packing="1d",
    tiny=TinyTwin(
        config_class="LlavaOnevisionConfig", processor_class="LlavaOnevisionProcessor",
        image_processor=("LlavaOnevisionImageProcessor", {"size": {"height": 56, "width": 56},
                                                          "image_grid_pinpoints": GRID}),
        video_processor=("LlavaOnevisionVideoProcessor", {"size": {"height": 56, "width": 56}}),
        vision={"model_type": "siglip_vision_model", **VIT},
        special_tokens=(*CHATML_TOKENS, "<image>", "<video>"), eos="<|im_end|>", pad="<|endoftext|>",
        named_tokens={"image_token": "<image>", "video_token": "<video>"}, chat_template="ecomtune:chatml_image.jinja",
        text={"model_type": "qwen2"}, config_token_ids={"image_token_id": "<image>", "video_token_id": "<video>"},
        config_extra={"image_grid_pinpoints": GRID},
        processor_extra={"num_image_tokens": 16, "vision_feature_select_strategy": "full"},
    ),
)


def _idefics_twin(config: str, processor: str, image_processor: str, template: str, bos: str, pad: str,
                  adds_bos: bool, video: tuple[str, dict] | None = None) -> TinyTwin:
    """Idefics3 and SmolVLM: a SigLIP-style ViT, pixel-shuffle connector, images split into tiles."""
    return TinyTwin(
        config_class=config, processor_class=processor,
        image_processor=(image_processor, {"size": {"longest_edge": 112}, "max_image_size": {"longest_edge": 56},
                                           "do_image_splitting": True}),
        video_processor=video, vision=dict(VIT),
        special_tokens=(bos, pad, "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>",
                        *TILE_TOKENS),
        bos=bos, eos="<end_of_utterance>", pad=pad, adds_bos=adds_bos,
        named_tokens={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                      "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"},
        chat_template=template, text={"model_type": "llama"}, config_token_ids={"image_token_id": "<image>"},
        config_extra={"scale_factor": 2}, processor_extra={"image_seq_len": 4},
    )


IDEFICS_KNOBS = {"longest_edge": ("size.longest_edge",), "splitting": ("do_image_splitting",)}

IDEFICS3 = BackboneSpec(
    family="idefics3", title="Idefics3", model_types=("idefics3",),
    hub_ids={"idefics3": "HuggingFaceM4/Idefics3-8B-Llama3"},
    vision_tower=("model.vision_model",), projector=("model.connector",), language_model=("model.text_model",),
    vision_lora_targets=CLIP_VISION_LORA, image_knobs=IDEFICS_KNOBS,
    packing="1d",
    tiny=_idefics_twin("Idefics3Config", "Idefics3Processor", "Idefics3ImageProcessor", "trl:idefics3.jinja",
                       bos="<|begin_of_text|>", pad="<|end_of_text|>", adds_bos=True),
)

SMOLVLM = BackboneSpec(
    family="smolvlm", title="SmolVLM / SmolVLM2", model_types=("smolvlm",),
    hub_ids={"smolvlm": "HuggingFaceTB/SmolVLM-Instruct", "smolvlm2": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
             "smolvlm2-500m": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"},
    vision_tower=("model.vision_model",), projector=("model.connector",), language_model=("model.text_model",),
    vision_lora_targets=CLIP_VISION_LORA, image_knobs=IDEFICS_KNOBS,
    packing="1d",
    tiny=_idefics_twin("SmolVLMConfig", "SmolVLMProcessor", "SmolVLMImageProcessor", "trl:smolvlm.jinja",
                       bos="<|im_start|>", pad="<|endoftext|>", adds_bos=False,
                       video=("SmolVLMVideoProcessor", {})),
)

PALIGEMMA = BackboneSpec(
    family="paligemma", title="PaliGemma 2", model_types=("paligemma",),
    hub_ids={"paligemma2": "google/paligemma2-3b-mix-448", "paligemma2-3b": "google/paligemma2-3b-mix-448",
             "paligemma2-10b": "google/paligemma2-10b-mix-448"},
    vision_tower=("model.vision_tower",), projector=("model.multi_modal_projector",),
    language_model=("model.language_model",), vision_lora_targets=CLIP_VISION_LORA,
    max_images=1, conversation="prefix-suffix", chat_template="ecomtune:paligemma.jinja",
    packing="1d",
    tiny=TinyTwin(
        config_class="PaliGemmaConfig", processor_class="PaliGemmaProcessor",
        image_processor=("SiglipImageProcessor", {"size": {"height": 56, "width": 56}, "image_seq_length": 16}),
        vision={"model_type": "siglip_vision_model", **VIT, "projection_dim": 64},
        special_tokens=("<bos>", "<eos>", "<pad>", "<image>"), bos="<bos>", eos="<eos>", pad="<pad>", adds_bos=True,
        chat_template="ecomtune:paligemma.jinja", text={"model_type": "gemma2", "head_dim": 16},
        config_token_ids={"image_token_id": "<image>"}, config_extra={"projection_dim": 64},
    ),
)

GEMMA3 = BackboneSpec(
    family="gemma3", title="Gemma 3", model_types=("gemma3",),
    hub_ids={"gemma3": "google/gemma-3-4b-it", "gemma3-4b": "google/gemma-3-4b-it",
             "gemma3-12b": "google/gemma-3-12b-it", "gemma3-27b": "google/gemma-3-27b-it"},
    vision_tower=("model.vision_tower",), projector=("model.multi_modal_projector",),
    language_model=("model.language_model",), vision_lora_targets=CLIP_VISION_LORA,
    image_placeholder="<start_of_image>",
    image_knobs={"splitting": ("do_pan_and_scan",), "max_tiles": ("pan_and_scan_max_num_crops",)},
    packing_refusal="Gemma 3 lets the tokens of one image attend to each other both ways; in a packed row transformers "
    "builds that overlay from packed positions, so images of later samples attend wrongly (measured on the tiny twin)",
    tiny=TinyTwin(
        config_class="Gemma3Config", processor_class="Gemma3Processor",
        image_processor=("Gemma3ImageProcessor", {"size": {"height": 56, "width": 56}}),
        vision={"model_type": "siglip_vision_model", **VIT},
        special_tokens=("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                        "<end_of_image>", "<image_soft_token>"),
        bos="<bos>", eos="<eos>", pad="<pad>", adds_bos=True, generation_eos="<end_of_turn>",
        named_tokens={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                      "eoi_token": "<end_of_image>"},
        chat_template="trl:gemma3.jinja", text={"head_dim": 16},
        config_token_ids={"image_token_id": "<image_soft_token>", "boi_token_id": "<start_of_image>",
                          "eoi_token_id": "<end_of_image>"},
        config_extra={"mm_tokens_per_image": 4}, processor_extra={"image_seq_length": 4},
    ),
)

MLLAMA = BackboneSpec(
    family="mllama", title="Llama 3.2 Vision", model_types=("mllama",),
    hub_ids={"llama3.2-vision": "meta-llama/Llama-3.2-11B-Vision-Instruct",
             "llama3.2-vision-11b": "meta-llama/Llama-3.2-11B-Vision-Instruct",
             "llama3.2-vision-90b": "meta-llama/Llama-3.2-90B-Vision-Instruct"},
    vision_tower=("model.vision_model",), projector=("model.multi_modal_projector",),
    language_model=("model.language_model",),
    vision_lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"),
    image_placeholder="<|image|>", max_images=1,  # cross-attention trained on one image per conversation
    image_knobs={"max_tiles": ("max_image_tiles",)},
    packing_refusal="Llama 3.2 Vision reads images through cross-attention masks laid out per row and per image, which "
    "samples laid end to end cannot share",
    text_only_refusal="transformers' Llama 3.2 Vision processor lays out a batch's images from its first sample: a "
    "batch holding a sample without an image beside one with an image fails, or gets image tensors of the wrong "
    "batch size",
    tiny=TinyTwin(
        config_class="MllamaConfig", processor_class="MllamaProcessor",
        image_processor=("MllamaImageProcessor", {"size": {"height": 56, "width": 56}, "max_image_tiles": 4}),
        vision=dict(hidden_size=W, intermediate_size=2 * W, num_hidden_layers=2, num_global_layers=1,
                    attention_heads=2, image_size=56, patch_size=14, intermediate_layers_indices=[0],
                    vision_output_dim=2 * W, max_num_tiles=4),
        special_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>", "<|image|>", "<|python_tag|>", "<|finetune_right_pad_id|>"),
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", adds_bos=True,
        named_tokens={"image_token": "<|image|>"}, chat_template="ecomtune:mllama.jinja",
        text={"cross_attention_layers": [1]}, config_token_ids={"image_token_id": "<|image|>"},
        fill={"cross_attn_attn_gate": 1.0, "cross_attn_mlp_gate": 1.0},  # tanh(0) = 0 would hide the image
    ),
)

INTERNVL = BackboneSpec(
    family="internvl", title="InternVL 3 (transformers-native)", model_types=("internvl",),
    hub_ids={"internvl3": "OpenGVLab/InternVL3-8B-hf", "internvl3-2b": "OpenGVLab/InternVL3-2B-hf",
             "internvl3-8b": "OpenGVLab/InternVL3-8B-hf"},
    vision_tower=("model.vision_tower",), projector=("model.multi_modal_projector",),
    language_model=("model.language_model",), vision_lora_targets=("q_proj", "k_proj", "v_proj", "fc1", "fc2"),
    image_placeholder="<IMG_CONTEXT>",
    image_knobs={"splitting": ("crop_to_patches",), "max_tiles": ("max_patches",)},
    packing="1d",
    tiny=TinyTwin(
        config_class="InternVLConfig", processor_class="InternVLProcessor",
        image_processor=("GotOcr2ImageProcessor", {"size": {"height": 56, "width": 56}, "crop_to_patches": False,
                                                   "max_patches": 2}),
        video_processor=("InternVLVideoProcessor", {"size": {"height": 56, "width": 56}}),
        vision={**{k: v for k, v in VIT.items() if k not in ("image_size", "patch_size")},
                "image_size": [56, 56], "patch_size": [14, 14]},
        special_tokens=(*CHATML_TOKENS, "<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
        eos="<|im_end|>", pad="<|endoftext|>",
        named_tokens={"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                      "video_token": "<video>"},
        chat_template="ecomtune:internvl.jinja", text={"model_type": "qwen2"},
        config_token_ids={"image_token_id": "<IMG_CONTEXT>"}, config_extra={"downsample_ratio": 0.5},
        processor_extra={"image_seq_length": 4},
    ),
)

MISTRAL3 = BackboneSpec(
    family="mistral3", title="Mistral 3 / Pixtral", model_types=("mistral3",),
    hub_ids={"mistral3": "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
             "mistral-small-3.1": "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
             "pixtral": "mistral-community/pixtral-12b"},
    vision_tower=("model.vision_tower",), projector=("model.multi_modal_projector",),
    language_model=("model.language_model",), vision_lora_targets=LLAMA_LINEARS,
    image_placeholder="[IMG]", image_knobs={"longest_edge": ("size.longest_edge",)},
    packing="1d",
    tiny=TinyTwin(
        config_class="Mistral3Config", processor_class="PixtralProcessor",
        image_processor=("PixtralImageProcessor", {"size": {"longest_edge": 112}, "patch_size": 14}),
        vision={"model_type": "pixtral", "hidden_size": W, "intermediate_size": 2 * W, "num_hidden_layers": 2,
                "num_attention_heads": 2, "image_size": 112, "patch_size": 14, "head_dim": W // 2},
        special_tokens=("<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]",
                        "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"),
        bos="<s>", eos="</s>", pad="<pad>", adds_bos=True, chat_template="ecomtune:mistral3.jinja",
        text={"model_type": "mistral", "head_dim": 16}, config_token_ids={"image_token_id": "[IMG]"},
        config_extra={"spatial_merge_size": 2, "vision_feature_layer": -1},
        processor_extra={"patch_size": 14, "spatial_merge_size": 2},
    ),
)

FAMILIES: tuple[BackboneSpec, ...] = (QWEN2_VL, QWEN2_5_VL, QWEN3_VL, LLAVA, LLAVA_NEXT, LLAVA_ONEVISION, IDEFICS3,
                                      SMOLVLM, PALIGEMMA, GEMMA3, MLLAMA, INTERNVL, MISTRAL3)
