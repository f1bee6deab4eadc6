"""The benchmark in the standard harness: `ecomtune bench export --format lmms-eval` and `bench --general`.

The end-to-end test runs lmms-eval's own Qwen2-VL class on a tiny Qwen2-VL folder (what `ecomtune export` writes)
and checks its scores and every answer against `ecomtune bench`. That class sends each image through JPEG at
quality 85 and resizes it to sides that are multiples of 28 (qwen_vl_utils) before the processor, which a random
tiny model notices. The test's images are 112 pixels a side and flat 8x8 blocks of grey levels that JPEG stores
exactly (checked with the harness's own encoder), so any difference left is a difference in the tasks.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import random
import shutil
import sys
from pathlib import Path

import pytest

from ecomtune.bench.lmms_eval_export import export_lmms_eval, harness_name
from ecomtune.errors import ConfigError, DataError
from ecomtune.tasks.registry import resolve_tasks
from tests.conftest import run_cli

TASKS = "deep-fashion,attribute-extraction"
OPTIONS = {"colour": ["red", "blue", "green", "grey"], "pattern": ["plain", "striped", "floral", "checked"]}


def grey_blocks(seed: int):
    """112x112 (four 28-pixel patches a side: no resizing anywhere), 8x8 blocks of grey levels 128 + 5k, which
    JPEG at quality 85 stores exactly."""
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    pixels = np.zeros((112, 112, 3), np.uint8)
    for y in range(0, 112, 8):
        for x in range(0, 112, 8):
            pixels[y:y + 8, x:x + 8] = 128 + 5 * rng.randint(-25, 25)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory) -> Path:
    """A small benchmark in the canonical layout: bench/<task>.jsonl beside images/ (paths relative, `../`)."""
    root = tmp_path_factory.mktemp("lmms-data")
    (root / "images").mkdir()
    (root / "bench").mkdir()
    for i in range(5):
        grey_blocks(i).save(root / "images" / f"p{i}.png")
    fashion = [{"id": f"f{i}", "images": [f"../images/p{i}.png"] + (["../images/p4.png"] if i == 0 else []),
                "subset": "tops", "attribute": attribute, "options": OPTIONS[attribute],
                "answer": OPTIONS[attribute][i % 4]}
               for i, attribute in enumerate(["colour", "pattern", "colour", "pattern"])]
    extraction = [{"id": f"e{i}", "images": [f"../images/p{i}.png"], "attributes": {"colour": "grey", "size": "M"}}
                  for i in range(2)]
    for name, records in (("deep-fashion", fashion), ("attribute-extraction", extraction)):
        (root / "bench" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root / "bench"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A plain Qwen2-VL model folder with its processor files, as `ecomtune export` leaves one."""
    from ecomtune.backbones.registry import resolve_backbone

    folder = tmp_path_factory.mktemp("model") / "tiny-qwen2-vl"
    shutil.copytree(resolve_backbone("tiny-qwen2-vl").source, folder)
    return folder


def load_utils(package: Path):
    spec = importlib.util.spec_from_file_location("ecomtune_lmms_utils", package / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_package_uses_ecomtune_prompts_and_scores(bench_data: Path, tmp_path: Path) -> None:
    """The YAML names local data and ecomtune's generation length; utils.py gives ecomtune's prompt, the images
    as PIL images, and scores over the whole list through Task.score."""
    import yaml

    from ecomtune.tasks.judging import FieldMatchJudge
    from ecomtune.tasks.registry import TASKS as ECOMTUNE_TASKS

    package = export_lmms_eval(tmp_path / "pkg", bench_data, resolve_tasks(TASKS))
    assert package.items == {"deep-fashion": 4, "attribute-extraction": 2}
    text = (tmp_path / "pkg" / "ecomtune_deep_fashion.yaml").read_text()
    config = yaml.load(text.replace("!function", ""), Loader=yaml.SafeLoader)
    assert config["task"] == "ecomtune_deep_fashion" and config["dataset_path"] == "json"
    assert config["dataset_kwargs"]["data_files"]["test"] == str((bench_data / "deep-fashion.jsonl").resolve())
    assert config["generation_kwargs"] == {"max_new_tokens": 8, "temperature": 0, "do_sample": False,
                                           "num_beams": 1, "until": []}
    assert [m["metric"] for m in config["metric_list"]] == ["accuracy", "unparsed_rate"]
    group = yaml.safe_load((tmp_path / "pkg" / "ecomtune.yaml").read_text())
    assert group == {"group": "ecomtune", "task": ["ecomtune_deep_fashion", "ecomtune_attribute_extraction"]}

    utils = load_utils(tmp_path / "pkg")
    records = [json.loads(line) for line in (bench_data / "deep-fashion.jsonl").read_text().splitlines()]
    task = ECOMTUNE_TASKS["deep-fashion"]
    doc = {"id": "f0", "aspects": None}  # the harness's document: only its id is trusted
    assert utils.ecomtune_deep_fashion_doc_to_text(doc) == task.prompt(records[0])
    visuals = utils.ecomtune_deep_fashion_doc_to_visual(doc)
    assert [v.size for v in visuals] == [(112, 112), (112, 112)] and visuals[0].mode == "RGB"
    answers = ["  red ", "striped", "nonsense", "grey"]
    items = [utils.ecomtune_deep_fashion_process_results({"id": r["id"]}, [a])["accuracy"]
             for r, a in zip(records, answers, strict=True)]
    expected, _ = task.score(records, [a.strip() for a in answers], FieldMatchJudge())
    assert utils.ecomtune_deep_fashion_accuracy(items) == expected["accuracy"] == 0.5
    assert utils.ecomtune_deep_fashion_unparsed_rate(items) == expected["unparsed_rate"]


def test_export_refusals(bench_data: Path, tmp_path: Path) -> None:
    """A non-empty --out needs --overwrite; the package never goes inside the data or its images; duplicate ids
    (the harness's documents are matched by id) are named."""
    chosen = resolve_tasks(TASKS)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not empty"):
        export_lmms_eval(tmp_path / "full", bench_data, chosen)
    export_lmms_eval(tmp_path / "full", bench_data, chosen, overwrite=True)
    assert not (tmp_path / "full" / "mine.txt").exists() and (tmp_path / "full" / "utils.py").is_file()
    for inside in (bench_data / "pkg", bench_data.parent / "images" / "pkg"):
        with pytest.raises(ConfigError, match="Refusing to write"):
            export_lmms_eval(inside, bench_data, chosen)
    twice = tmp_path / "twice"
    twice.mkdir()
    line = (bench_data / "deep-fashion.jsonl").read_text().splitlines()[0].replace("../images/", str(
        bench_data.parent / "images") + "/")
    (twice / "deep-fashion.jsonl").write_text(f"{line}\n{line}\n")
    with pytest.raises(DataError, match="unique"):
        export_lmms_eval(tmp_path / "dup", twice, resolve_tasks("deep-fashion"))


def test_cli_export_errors_are_one_message(tmp_path: Path) -> None:
    result = run_cli("bench", "export", "--format", "vlmeval", "--out", str(tmp_path / "pkg"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--format vlmeval is not known" in result.stderr and "lmms-eval" in result.stderr


@pytest.mark.slow
def test_lmms_eval_scores_equal_ecomtune_bench(bench_data: Path, model_folder: Path, tmp_path: Path) -> None:
    """lmms-eval's qwen2_vl class on the exported package scores what `ecomtune bench` scores, answer for answer."""
    pytest.importorskip("lmms_eval", reason="lmms-eval is the optional extra: pip install 'ecomtune[eval]'")
    pytest.importorskip("decord", reason="lmms-eval's qwen2_vl class imports decord (in ecomtune[eval])")
    from lmms_eval.models.model_utils.media_encoder import encode_image_to_data_url
    from PIL import Image

    from ecomtune.bench.general_harness import HarnessPlan, run_general
    from ecomtune.bench.runner import run_bench

    url = encode_image_to_data_url(grey_blocks(0), image_format="JPEG", mime_type="image/jpeg", convert_rgb=True,
                                   quality=85)  # what the qwen2_vl class does to every image
    assert list(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).getdata()) == list(
        grey_blocks(0).getdata())

    chosen = resolve_tasks(TASKS)
    export_lmms_eval(tmp_path / "pkg", bench_data, chosen)
    names = [harness_name(t) for t in chosen]
    plan = HarnessPlan(str(model_folder), "qwen2_vl", names, names, include_path=tmp_path / "pkg",
                       extra=("--log_samples",))
    harness = run_general(plan, tmp_path / "harness")
    print("lmms-eval command:", " ".join(harness["command"][2:]))
    ours = run_bench(str(model_folder), TASKS, bench_data, batch_size=1)
    for task in chosen:
        theirs = harness["tasks"][harness_name(task)]
        expected = {k: v for k, v in ours["tasks"][task.name]["scores"].items() if k in theirs}
        print(task.name, "lmms-eval:", theirs, "ecomtune bench:", expected)
        assert theirs == expected and set(theirs) == set(expected)
        samples = next((tmp_path / "harness").rglob(f"*samples_{harness_name(task)}.jsonl"))
        answers = [json.loads(line) for line in samples.read_text().splitlines()]
        predicted = [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
                     for s in sorted(answers, key=lambda s: s["doc_id"])]
        assert [p.strip() for p in predicted] == [e["prediction"] for e in ours["tasks"][task.name]["examples"]]


def test_general_offline_is_one_message_before_any_model(model_folder: Path, tmp_path: Path) -> None:
    """No hub, nothing cached: one message naming each task's dataset and the fix, exit 2, seconds not minutes."""
    pytest.importorskip("lmms_eval", reason="lmms-eval is the optional extra: pip install 'ecomtune[eval]'")
    result = run_cli("bench", "--model", str(model_folder), "--general", "lmms-eval:mme,textvqa_val",
                     env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                          "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "nothing was run" in result.stderr and "lmms-lab-encoder/MME" in result.stderr
    assert "HF_DATASETS_CACHE" in result.stderr and not result.stdout.strip()


def test_general_names_missing_data_and_accepts_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub dataset counts as present once the hub cache or the datasets cache holds it; local files are checked."""
    pytest.importorskip("lmms_eval", reason="lmms-eval is the optional extra: pip install 'ecomtune[eval]'")
    from datasets import config as datasets_config
    from huggingface_hub import constants

    from ecomtune.bench import general_harness

    (tmp_path / "hub").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets_config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    configs = {"hubtask": "dataset_path: org/set\n", "preparedtask": "dataset_path: org/MySet\n",
               "localtask": f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path}/absent.jsonl\n"}
    index = {}
    for name, text in configs.items():
        (tmp_path / f"{name}.yaml").write_text(f"task: {name}\n{text}")
        index[name] = {"type": "task", "yaml_path": str(tmp_path / f"{name}.yaml")}
    index["all3"] = {"type": "group", "task": ["hubtask", "preparedtask", "localtask"], "yaml_path": -1}
    manager = type("Manager", (), {"task_index": index, "all_tasks": list(index)})()

    leaves = general_harness.leaf_tasks(manager, ["all3", "hubtask"])
    assert leaves == ["hubtask", "preparedtask", "localtask"]
    problems = [p.what for p in general_harness.missing_data(manager, leaves, hub_reachable=False)]
    assert problems[0] == "hubtask: dataset org/set is not in the local cache and the hub is not reachable"
    assert "org/MySet" in problems[1] and "absent.jsonl" in problems[2]
    assert [p.what for p in general_harness.missing_data(manager, leaves, hub_reachable=True)] == [problems[2]]
    (tmp_path / "hub" / "datasets--org--set" / "snapshots" / "abc").mkdir(parents=True)
    (tmp_path / "datasets" / "org___my_set").mkdir(parents=True)  # as `datasets` names a prepared copy
    (tmp_path / "absent.jsonl").write_text("{}\n")
    assert general_harness.missing_data(manager, leaves, hub_reachable=False) == []
    with pytest.raises(ConfigError, match="did you mean"):
        general_harness.leaf_tasks(manager, ["hubtsk"])


def test_general_refuses_what_the_harness_cannot_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without lmms-eval: the extra is named. An adapter folder: `ecomtune export` is named. A bad spec: an example."""
    from ecomtune.bench import general_harness

    monkeypatch.setitem(sys.modules, "lmms_eval", None)
    with pytest.raises(ConfigError) as missing:
        general_harness.require_lmms_eval()
    assert "pip install 'ecomtune[eval]'" in missing.value.render()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny-qwen2-vl"}))
    with pytest.raises(ConfigError) as run:
        general_harness.harness_model(str(adapter))
    assert f"ecomtune export {adapter} --out MERGED" in run.value.render()
    with pytest.raises(ConfigError, match="names no lmms-eval tasks"):
        general_harness.parse_general("mme")
    assert general_harness.parse_general("lmms-eval:mme, textvqa_val") == ["mme", "textvqa_val"]


def test_general_checks_first_and_writes_its_scores_beside_ecomtunes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness's checks come before ecomtune's tasks run; its scores land under general_harness in --out."""
    from ecomtune.bench import general_harness, runner

    calls: list[str] = []
    plan = general_harness.HarnessPlan("m", "qwen2_vl", ["mme"], ["mme"])
    monkeypatch.setattr(general_harness, "plan_general", lambda model, names: calls.append(f"plan {names}") or plan)
    monkeypatch.setattr(runner, "run_bench", lambda *a, **k: calls.append("bench") or {"tasks": {}, "model": {}})
    monkeypatch.setattr(general_harness, "run_general", lambda p: calls.append("harness") or {"tasks": {"mme": {}}})
    out = tmp_path / "results.json"
    results = general_harness.run_bench_with_general("lmms-eval:mme", "m", "general", tmp_path / "data", out=out)
    assert calls == ["plan ['mme']", "bench", "harness"]
    assert json.loads(out.read_text())["general_harness"] == results["general_harness"] == {"tasks": {"mme": {}}}
    calls.clear()
    with pytest.raises(ConfigError, match="already exists"):
        general_harness.run_bench_with_general("lmms-eval:mme", "m", "general", tmp_path / "data", out=out)
    assert calls == []
