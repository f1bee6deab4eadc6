"""Hand-made copies of public datasets' on-disk layouts, written into temporary folders for tests: the file and shard
names, schemas and dataset-card metadata the real releases have (see README.md, "Layouts read"), a few rows each.

- LLaVA-OneVision-Data (lmms-lab): one folder per config, `<config>/train-0000i-of-0000N.parquet`, columns `id`,
  `image` (Image), `conversations` (from/value), `data_source`; README.md front matter `dataset_info:` (one entry per
  config_name with features and split sizes) and `configs:` (config_name, data_files split/path `<config>/train-*`).
- LLaVA-NeXT-Data / single-config repos: `data/train-0000i-of-0000N.parquet`, one `default` config.
- trl-lib/llava-instruct-mix: `data/train-*.parquet`, columns `images` (list of Image), `prompt` and `completion`
  (lists of messages whose content is blocks `{"type", "text"}`).
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

CONVERSATION = [{"from": "string", "value": "string"}]


def png(colour: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (48, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def onevision_rows(config: str, count: int, text_only: bool = False, marker: bool = True) -> dict[str, list]:
    """OneVision-Data columns: text-only subsets (magpie) have `image` None; the Cauldron subsets' human turns have
    no `<image>` marker."""
    question = ("<image>\n" if marker and not text_only else "") + "What is shown?"
    return {"id": [f"{config}-{i}" for i in range(count)],
            "image": [None if text_only else {"bytes": png((20 * i % 255, 90, 160)), "path": f"{i}.png"}
                      for i in range(count)],
            "conversations": [[{"from": "human", "value": question}, {"from": "gpt", "value": f"answer {i}"}]
                              for i in range(count)],
            "data_source": [config] * count}


def onevision_features():
    from datasets import Features, Image, Value

    return Features({"id": Value("string"), "image": Image(),
                     "conversations": [{"from": Value("string"), "value": Value("string")}],
                     "data_source": Value("string")})


def write_shards(folder: Path, columns: dict[str, list], features, shards: int, split: str = "train",
                 keep: set[int] | None = None) -> list[Path]:
    """`columns` cut into `shards` parquet files named `<split>-0000i-of-0000N.parquet` (the hub's naming);
    `keep`: only those shard indices are written (a partial download)."""
    from datasets import Dataset

    folder.mkdir(parents=True, exist_ok=True)
    dataset = Dataset.from_dict(columns, features=features)
    written = []
    for index in range(shards):
        if keep is not None and index not in keep:
            continue
        path = folder / f"{split}-{index:05d}-of-{shards:05d}.parquet"
        dataset.shard(shards, index, contiguous=True).to_parquet(str(path))
        written.append(path)
    return written


def card(configs: dict[str, int], features_yaml: list[dict[str, Any]], layout: str = "{config}/train-*") -> str:
    """A dataset card's README.md: `dataset_info` per config (features, split sizes) and `configs` with data_files,
    as the hub writes them."""
    info = [{"config_name": name, "features": features_yaml,
             "splits": [{"name": "train", "num_bytes": 1000 * rows, "num_examples": rows}],
             "download_size": 1000 * rows, "dataset_size": 1000 * rows} for name, rows in configs.items()]
    listed = [{"config_name": name, "data_files": [{"split": "train", "path": layout.format(config=name)}]}
              for name in configs]
    front = {"dataset_info": info if len(info) > 1 else {k: v for k, v in info[0].items()},
             "configs": listed}
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n# Dataset card\n"


ONEVISION_FEATURES_YAML = [{"name": "id", "dtype": "string"}, {"name": "image", "dtype": "image"},
                           {"name": "conversations", "list": [{"name": "from", "dtype": "string"},
                                                               {"name": "value", "dtype": "string"}]},
                           {"name": "data_source", "dtype": "string"}]


def onevision_folder(root: Path, configs: dict[str, int], readme: bool = True, shards: int = 1,
                     partial: dict[str, set[int]] | None = None, text_only: set[str] = frozenset(),
                     no_marker: set[str] = frozenset()) -> Path:
    """`huggingface-cli download lmms-lab/LLaVA-OneVision-Data` into `root` (all of it, or `--include` of some
    configs, or an interrupted download: `partial` maps a config to the shard indices present)."""
    for config, rows in configs.items():
        write_shards(root / config, onevision_rows(config, rows, config in text_only, config not in no_marker),
                     onevision_features(), shards, keep=(partial or {}).get(config))
    if readme:
        (root / "README.md").write_text(card(configs, ONEVISION_FEATURES_YAML))
    return root


def trl_prompt_completion(root: Path, rows: int = 3) -> Path:
    """trl-lib/llava-instruct-mix's layout: `data/train-*.parquet` with images, prompt, completion."""
    from datasets import Features, Image, Sequence, Value

    block = {"text": Value("string"), "type": Value("string")}
    message = {"content": [block], "role": Value("string")}
    features = Features({"images": Sequence(Image()), "prompt": [message], "completion": [message]})
    columns = {"images": [[{"bytes": png((i * 40, 10, 10)), "path": None}] for i in range(rows)],
               "prompt": [[{"role": "user", "content": [{"type": "image", "text": None},
                                                         {"type": "text", "text": f"What is item {i}?"}]}]
                          for i in range(rows)],
               "completion": [[{"role": "assistant", "content": [{"type": "text", "text": f"item {i}"}]}]
                              for i in range(rows)]}
    write_shards(root / "data", columns, features, 1)
    message_yaml = [{"name": "content", "list": [{"name": "text", "dtype": "string"},
                                                 {"name": "type", "dtype": "string"}]},
                    {"name": "role", "dtype": "string"}]
    features_yaml = [{"name": "images", "sequence": "image"}, {"name": "prompt", "list": message_yaml},
                     {"name": "completion", "list": copy.deepcopy(message_yaml)}]  # no YAML aliases
    (root / "README.md").write_text(card({"default": rows}, features_yaml, "data/train-*"))
    return root


def write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))
    return path


def llamafactory_data(root: Path) -> Path:
    """LLaMA-Factory's `data/` folder: dataset_info.json mapping names to files (mllm_demo: sharegpt with role/content
    tags and images under mllm_demo_data/; alpaca_en_demo: alpaca defaults; an alpaca dataset with images, history
    and a system column; a sharegpt dataset with its own tags; a ranking dataset; a hub entry)."""
    (root / "mllm_demo_data").mkdir(parents=True, exist_ok=True)
    for index in (1, 2):
        Image.new("RGB", (40, 30), (60 * index, 20, 90)).save(root / "mllm_demo_data" / f"{index}.jpg")
    write_json(root / "mllm_demo.json", [
        {"messages": [{"content": "<image>Who are they?", "role": "user"},
                      {"content": "They're football players.", "role": "assistant"},
                      {"content": "What are they doing?", "role": "user"},
                      {"content": "They are celebrating.", "role": "assistant"}],
         "images": ["mllm_demo_data/1.jpg"]},
        {"messages": [{"content": "<image>Who is he?", "role": "user"},
                      {"content": "A goalkeeper.", "role": "assistant"}], "images": ["mllm_demo_data/2.jpg"]}])
    write_json(root / "alpaca_en_demo.json", [
        {"instruction": "Describe a process.", "input": "", "output": "First, ..."},
        {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}])
    write_json(root / "catalog_alpaca.json", [
        {"instruction": "<image>What colour is this product?", "input": "", "output": "Red.",
         "system": "You are a catalogue assistant.", "history": [["Hi", "Hello!"]],
         "images": ["mllm_demo_data/1.jpg"]}])
    write_json(root / "tagged.json", [
        {"dialog": [{"speaker": "customer", "text": "<image>Is it new?"}, {"speaker": "agent", "text": "Yes."}],
         "pictures": ["mllm_demo_data/2.jpg"]}])
    write_json(root / "dpo_en_demo.json", [])
    info = {
        "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                      "columns": {"messages": "messages", "images": "images"},
                      "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                               "assistant_tag": "assistant"}},
        "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
        "catalog_alpaca": {"file_name": "catalog_alpaca.json",
                           "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                       "system": "system", "history": "history", "images": "images"}},
        "tagged": {"file_name": "tagged.json", "formatting": "sharegpt",
                   "columns": {"messages": "dialog", "images": "pictures"},
                   "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "customer",
                            "assistant_tag": "agent"}},
        "dpo_en_demo": {"file_name": "dpo_en_demo.json", "ranking": True, "formatting": "sharegpt",
                        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en", "ms_hub_url": "llamafactory/alpaca_en"},
    }
    return write_json(root / "dataset_info.json", info)


def recap_folder(root: Path, rows: int = 2, shards: int = 2) -> Path:
    """lmms-lab/LLaVA-ReCap-{558K,118K,CC3M} as downloaded: README.md (one `default` config, data/train-*) and
    data/train-0000i-of-0000N.parquet with id, image, conversations."""
    columns = onevision_rows("recap", rows)
    features = onevision_features()
    columns.pop("data_source")
    from datasets import Features

    features = Features({k: v for k, v in features.items() if k != "data_source"})
    write_shards(root / "data", columns, features, shards)
    yaml_features = [f for f in ONEVISION_FEATURES_YAML if f["name"] != "data_source"]
    (root / "README.md").write_text(card({"default": rows}, yaml_features, "data/train-*"))
    return root


def llava_json(path: Path, images: list[str], image_root: Path) -> Path:
    """A LLaVA JSON array (LLaVA-Pretrain's blip_laion_cc_sbu_558k.json, OneVision-Mid's synthdog_en_processed.json):
    rows `{"id", "image", "conversations"}` whose images lie under `image_root`."""
    for index, name in enumerate(images):
        (image_root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (30 * index % 255, 120, 60)).save(image_root / name)
    rows = [{"id": Path(name).stem, "image": name,
             "conversations": [{"from": "human", "value": "<image>\nRead the text in the image."},
                               {"from": "gpt", "value": f"text {index}"}]} for index, name in enumerate(images)]
    return write_json(path, rows)
