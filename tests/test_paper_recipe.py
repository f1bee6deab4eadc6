"""The shipped paper recipe plans on hand-made copies of the public sources it names, laid out as they download:
LLaVA-Pretrain's JSON and unzipped images, the LLaVA-ReCap repositories' parquet shards and cards, OneVision-Mid's
synthdog_en folder, and one LLaVA-OneVision-Data folder per subset. The tiny twin of the recipe's family stands in
for the 7B (same processor rules), so planning loads no weights.
"""

from __future__ import annotations

import json

import pytest

from ecomtune.config.recipe_files import load_recipe
from ecomtune.train.plan import plan_stage
from tests.conftest import REPO
from tests.layouts import llava_json, onevision_features, onevision_rows, recap_folder, write_shards

RECIPE = REPO / "recipes" / "paper-qwen2.5-vl.yaml"


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    """`data/` as the recipe's comments say to download it, a few rows per source."""
    root = tmp_path_factory.mktemp("paper")
    data = root / "data"
    llava_json(data / "llava-pretrain" / "blip_laion_cc_sbu_558k.json",
               ["00000/000000010.jpg", "00453/004539375.jpg"], data / "llava-pretrain" / "images")
    for name in ("558k", "118k", "cc3m"):
        recap_folder(data / "llava-recap" / name)
    synthdog = data / "llava-onevision-mid" / "synthdog_en"
    llava_json(synthdog / "synthdog_en_processed.json", ["synthdog-en/image_0.jpg", "synthdog-en/image_1.jpg"],
               synthdog)
    recipe = load_recipe(RECIPE)
    for source in recipe.sft.data:
        if source.path.startswith("data/llava-onevision/"):
            subset = source.path.split("/", 2)[2]
            write_shards(root / source.path, onevision_rows(subset, 2), onevision_features(), 1)
    (data / "ecommerce").mkdir()
    llava_json(data / "ecommerce" / "listing.json", ["item.jpg"], data / "ecommerce")
    record = {"images": ["item.jpg"], "messages": [{"role": "user", "content": "<image>Which colour?"},
                                                  {"role": "assistant", "content": "green"}]}
    (data / "ecommerce" / "instruct.jsonl").write_text(json.dumps(record) + "\n")
    return root


@pytest.mark.parametrize("stage", ["align", "mid", "sft"])
def test_each_stage_plans_on_copies_of_its_real_sources(stage, copied, monkeypatch):
    monkeypatch.chdir(copied)
    recipe = load_recipe(RECIPE, ["backbone.name=tiny-qwen2.5-vl"])
    report = plan_stage(recipe, stage)
    sources = getattr(recipe, stage).data
    assert len(report["mixture"]) == len(sources) and all(row["available"] > 0 for row in report["mixture"])
    assert report["samples"] > 0
