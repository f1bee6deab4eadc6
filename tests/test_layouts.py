"""The public datasets' real layouts (tests/layouts.py builds hand-made copies): multi-config downloads, partial
shard downloads, the card's split sizes, text-only and marker-less subsets, TRL's prompt/completion vision data,
empty sources and datasets without a conversation column.
"""

from __future__ import annotations

import json

import datasets
import pytest

from ecomtune.config.schema import DataSource
from ecomtune.data.prepare.stage_samples import load_stage_samples
from ecomtune.data.sources import open_source
from ecomtune.errors import DataError
from tests.layouts import onevision_folder, onevision_rows, trl_prompt_completion

CLEVR, MAGPIE, AI2D = "CLEVR-Math(MathV360K)", "magpie_pro(l3_80b_mt)", "ai2d(cauldron)"


@pytest.fixture(scope="module")
def onevision(tmp_path_factory):
    """lmms-lab/LLaVA-OneVision-Data as `hf download` leaves it: a text-only subset (magpie) and a Cauldron subset
    whose human turns have no `<image>`."""
    return onevision_folder(tmp_path_factory.mktemp("ov") / "LLaVA-OneVision-Data", {CLEVR: 4, MAGPIE: 2, AI2D: 3},
                            shards=2, text_only={MAGPIE}, no_marker={AI2D})


def test_a_folder_of_configs_is_refused_naming_them_and_how_to_pick_one(onevision):
    with pytest.raises(DataError) as raised:
        open_source(onevision)
    error = raised.value
    assert all(name in error.title for name in (CLEVR, MAGPIE, AI2D)) and "never reads them merged" in error.title
    assert f"config: '{CLEVR}'" in error.fix


def test_a_download_without_its_readme_is_refused_not_merged(tmp_path):
    folder = onevision_folder(tmp_path / "ov", {CLEVR: 3, MAGPIE: 2}, readme=False, text_only={MAGPIE})
    with pytest.raises(DataError) as raised:
        open_source(folder)
    assert f"({CLEVR}, {MAGPIE})" in raised.value.title and "config:" in raised.value.fix
    assert open_source(folder, config=MAGPIE).rows == 2, "a config is then its folder"
    with pytest.raises(DataError, match="did you mean 'magpie_pro"):
        open_source(folder, config="magpie_pro")


def test_each_config_is_a_source_of_its_own_with_its_own_rule(onevision):
    read = load_stage_samples([DataSource(path=str(onevision), config=CLEVR, sampling="first:3"),
                               DataSource(path=str(onevision), config=MAGPIE),
                               DataSource(path=str(onevision), config=AI2D)])
    assert [(u.path.endswith(f"(config {c})"), u.available, u.taken) for u, c in
            zip(read.sources, (CLEVR, MAGPIE, AI2D), strict=True)] == [(True, 4, 3), (True, 2, 2), (True, 3, 3)]
    samples = list(read.samples)
    assert [len(s.images) for s in samples] == [1, 1, 1, 0, 0, 1, 1, 1]
    cauldron = samples[-1].messages[0]["content"]
    assert cauldron[0] == {"type": "image"} and cauldron[1]["text"] == "What is shown?", "the marker rule added it"
    with pytest.raises(DataError, match=r"no config 'CLEVR-Math' \(did you mean 'CLEVR-Math\(MathV360K\)'\?\)"):
        open_source(onevision, config="CLEVR-Math")


def test_a_partial_download_reads_the_shards_there_and_names_the_missing_ones(tmp_path):
    folder = onevision_folder(tmp_path / "ov", {CLEVR: 6, MAGPIE: 3}, shards=3, partial={CLEVR: {0, 2}})
    opened = open_source(folder, config=CLEVR)
    assert opened.rows == 4
    [note] = opened.notes
    assert f"{CLEVR}/train-00001-of-00003.parquet" in note and "4 rows of the 6 its README.md declares" in note
    assert f"--include '{CLEVR}/train-00001-of-00003.parquet'" in note
    read = load_stage_samples([DataSource(path=str(folder), config=CLEVR)])
    assert read.notes == [note], "the stage says it"


def test_files_that_disagree_with_the_card_are_one_clear_error(tmp_path):
    folder = onevision_folder(tmp_path / "ov", {CLEVR: 4, MAGPIE: 2}, text_only={MAGPIE})
    card = (folder / "README.md").read_text().replace("num_examples: 4", "num_examples: 40")
    (folder / "README.md").write_text(card)
    with pytest.raises(DataError) as raised:
        open_source(folder, config=CLEVR)
    assert "40 declared, 4 found" in raised.value.title and "SplitInfo" not in raised.value.render()


def test_a_hub_config_offline_names_the_config_and_the_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as raised:
        open_source("lmms-lab/LLaVA-OneVision-Data", config=CLEVR)
    assert CLEVR in raised.value.title
    assert f"datasets.load_dataset('lmms-lab/LLaVA-OneVision-Data', '{CLEVR}', split='train')" in raised.value.fix


def test_trl_prompt_completion_learns_the_completion_only(tmp_path):
    from ecomtune.backbones.model_loading import load_processor
    from ecomtune.backbones.registry import resolve_backbone
    from ecomtune.data.batches.collator import IGNORE_INDEX, VisionChatCollator

    read = load_stage_samples(trl_prompt_completion(tmp_path / "llava-instruct-mix"))
    samples = list(read.samples)
    assert [len(s.images) for s in samples] == [1, 1, 1]
    processor = load_processor(resolve_backbone("tiny-qwen2-vl"))
    batch = VisionChatCollator(processor).encode(samples)
    for index, (ids, labels) in enumerate(zip(batch["input_ids"], batch["labels"], strict=True)):
        learnt = processor.tokenizer.decode(ids[labels != IGNORE_INDEX], skip_special_tokens=True)
        assert learnt.strip() == f"item {index}"


def empty_sources(folder):
    (folder / "empty.jsonl").write_text("")
    (folder / "empty.json").write_text("[]")
    from tests.layouts import onevision_features

    datasets.Dataset.from_dict(onevision_rows("x", 0), features=onevision_features()).save_to_disk(
        str(folder / "saved"))
    datasets.Dataset.from_dict(onevision_rows("x", 0), features=onevision_features()).to_parquet(
        str(folder / "empty.parquet"))
    return ["empty.jsonl", "empty.json", "saved", "empty.parquet"]


def test_empty_sources_of_every_format_give_the_same_message(tmp_path):
    messages = []
    for name in empty_sources(tmp_path):
        with pytest.raises(DataError) as raised:
            load_stage_samples(str(tmp_path / name))
        messages.append(raised.value.title.replace(name, "NAME"))
    assert len(set(messages)) == 1 and "gives no samples" in messages[0] and "(0 rows, all)" in messages[0]


def test_columns_are_checked_once_naming_what_was_found_and_how_to_map_it(tmp_path):
    rows = {"dialog": [[{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "hello"}]] * 3,
            "label": [1, 2, 3]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError) as raised:
        load_stage_samples(str(tmp_path / "d"))
    assert not raised.value.problems, "one error for the source, not one per row"
    assert "its columns are dialog, label" in raised.value.title and "`messages`" in raised.value.title
    assert "columns:" in raised.value.fix
    read = load_stage_samples([DataSource(path=str(tmp_path / "d"), columns={"messages": "dialog"})])
    assert [m["role"] for m in next(iter(read.samples)).messages] == ["user", "assistant"]
    with pytest.raises(DataError, match="names chat, which it does not have"):
        open_source(tmp_path / "d", columns={"messages": "chat"})


def test_llama_factory_sharegpt_system_column_is_the_first_turn(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "red"}],
             "system": "You are a catalogue assistant."},
            {"conversations": [{"from": "system", "value": "Other."}, {"from": "human", "value": "Colour?"},
                               {"from": "gpt", "value": "red"}], "system": "You are a catalogue assistant."}]
    (tmp_path / "sharegpt.json").write_text(json.dumps(rows))
    with pytest.raises(DataError) as raised:
        load_stage_samples(str(tmp_path / "sharegpt.json"))
    [problem] = raised.value.problems
    assert problem.where.endswith("[row 1]") and "both a 'system' column and a system turn" in problem.what
    (tmp_path / "sharegpt.json").write_text(json.dumps(rows[:1]))
    [sample] = list(load_stage_samples(str(tmp_path / "sharegpt.json")).samples)
    assert sample.messages[0] == {"role": "system", "content": [{"type": "text",
                                                                 "text": "You are a catalogue assistant."}]}


@pytest.fixture(scope="module")
def llamafactory(tmp_path_factory):
    from tests.layouts import llamafactory_data

    return llamafactory_data(tmp_path_factory.mktemp("LLaMA-Factory") / "data")


def test_dataset_info_with_a_dataset_name_reads_its_file_format_columns_and_tags(llamafactory):
    read = load_stage_samples(f"{llamafactory}#mllm_demo")
    [use] = read.sources
    assert use.path == str(llamafactory.parent / "mllm_demo.json") and use.format == "sharegpt"
    first = next(iter(read.samples))
    assert first.images == [str(llamafactory.parent / "mllm_demo_data" / "1.jpg")], "images start at data/"
    assert [m["role"] for m in first.messages] == ["user", "assistant", "user", "assistant"]
    tagged = next(iter(load_stage_samples([DataSource(path=str(llamafactory), dataset="tagged")]).samples))
    assert [m["role"] for m in tagged.messages] == ["user", "assistant"] and len(tagged.images) == 1


def test_alpaca_rows_with_images_history_and_system(llamafactory):
    [sample] = list(load_stage_samples(f"{llamafactory}#catalog_alpaca").samples)
    assert [m["role"] for m in sample.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert sample.messages[3]["content"][0] == {"type": "image"} and len(sample.images) == 1
    plain = list(load_stage_samples(f"{llamafactory}#alpaca_en_demo").samples)
    assert plain[1].messages[0]["content"] == [{"type": "text", "text": "Translate.\nBonjour"}]


def test_a_mixture_naming_several_datasets(llamafactory):
    read = load_stage_samples(f"{llamafactory}#mllm_demo,catalog_alpaca,alpaca_en_demo")
    assert [(u.format, u.taken) for u in read.sources] == [("sharegpt", 2), ("alpaca", 1), ("alpaca", 2)]


def test_dataset_info_without_a_name_or_with_what_cannot_train_is_refused(llamafactory):
    from ecomtune.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        load_stage_samples(str(llamafactory))
    assert "lists 6 datasets" in raised.value.title and "#NAME" in raised.value.fix
    with pytest.raises(ConfigError) as raised:
        load_stage_samples(f"{llamafactory}#dpo_en_demo,mllm_dmeo")
    found = {p.what for p in raised.value.problems}
    assert any("ranking" in w for w in found) and "no dataset 'mllm_dmeo' (did you mean 'mllm_demo'?)" in found


def test_a_onevision_yaml_with_one_global_image_folder(tmp_path):
    from tests.layouts import llava_json

    images = tmp_path / "llava_data" / "images"
    llava_json(tmp_path / "llava_data" / "json" / "synthdog_en_100k.json", ["synthdog-en/0.jpg"], images)
    llava_json(tmp_path / "llava_data" / "json" / "ureader_tr_sft.json", ["docvqa/1.png", "docvqa/2.png"], images)
    mixture = tmp_path / "mid_stage.yaml"
    mixture.write_text("image_folder: llava_data/images\ndatasets:\n"
                       "  - json_path: llava_data/json/synthdog_en_100k.json\n    sampling_strategy: all\n"
                       "  - json_path: llava_data/json/ureader_tr_sft.json\n    sampling_strategy: first:50%\n")
    read = load_stage_samples(mixture)
    assert [u.taken for u in read.sources] == [1, 1]
    assert next(iter(read.samples)).images == [str(images / "synthdog-en" / "0.jpg")]


def test_a_released_onevision_yaml_reports_every_missing_path_at_once(tmp_path):
    from ecomtune.errors import ConfigError

    mixture = tmp_path / "onevision.yaml"
    mixture.write_text("datasets:\n"
                       "  - json_path: /mnt/bn/vl-research/data/llava_instruct/blip558k_stage1.5_finetune.json\n"
                       "    sampling_strategy: all\n"
                       "  - json_path: /mnt/bn/vl-research/data/llava_instruct/coco118k_stage1.5_finetune.json\n"
                       "    sampling_strategy: all\n"
                       "  - json_path: json/here.json\n    image_folder: missing_images\n    sampling_strategy: all\n")
    with pytest.raises(ConfigError) as raised:
        load_stage_samples(mixture)
    found = [(p.where, p.what) for p in raised.value.problems]
    assert [where for where, _ in found] == [f"{mixture}:2", f"{mixture}:4", f"{mixture}:6", f"{mixture}:6"]
    assert "blip558k_stage1.5_finetune.json" in found[0][1] and "image folder not found" in found[3][1]


def test_a_missing_image_names_where_relative_paths_start(tmp_path):
    from tests.layouts import llava_json

    llava_json(tmp_path / "data.json", ["a.jpg"], tmp_path)
    (tmp_path / "a.jpg").unlink()
    with pytest.raises(DataError) as raised:
        load_stage_samples(str(tmp_path / "data.json"))
    [problem] = raised.value.problems
    assert "file not found" in problem.what and "image_root" in problem.fix and "image_folder" in problem.fix


def test_every_source_that_cannot_be_opened_is_named_at_once(tmp_path):
    sources = [DataSource(path=str(tmp_path / "a.jsonl")), DataSource(path=str(tmp_path / "b.json"))]
    with pytest.raises(DataError) as raised:
        load_stage_samples(sources)
    assert [p.where for p in raised.value.problems] == [s.path for s in sources]


def test_a_lone_image_marker_after_the_prompt_stays_where_the_row_puts_it(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.jpg")
    rows = [{"id": "1", "image": "a.jpg", "conversations": [{"from": "human", "value": "What is this?\n<image>"},
                                                             {"from": "gpt", "value": "a box"}]}]
    (tmp_path / "llava.json").write_text(json.dumps(rows))
    [sample] = list(load_stage_samples(str(tmp_path / "llava.json")).samples)
    assert [b["type"] for b in sample.messages[0]["content"]] == ["text", "image"]
