"""ecomtune from Python: the Python API page and README's example run as written (their python blocks, in order, in
one namespace, in an empty folder), `import ecomtune` stays cheap, and mistakes are typed errors, never exits."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ecomtune

REPO = Path(__file__).resolve().parent.parent
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
CAPTIONS = REPO / "data_samples" / "captions.jsonl"


def python_blocks(page: Path) -> list[str]:
    blocks = PYTHON_BLOCK.findall(page.read_text(encoding="utf-8"))
    assert blocks, f"{page.name} has no python block"
    return blocks


def run_blocks(page: Path, folder: Path, monkeypatch) -> dict:
    """Exec every python block of `page` in order, in one namespace, with `folder` as the working folder."""
    monkeypatch.chdir(folder)
    namespace: dict = {"__name__": "__main__"}
    for number, block in enumerate(python_blocks(page), start=1):
        try:
            exec(compile(block, f"{page.name} block {number}", "exec"), namespace)
        except SystemExit as exc:  # pragma: no cover - the failure this test guards against
            pytest.fail(f"{page.name} block {number} raised SystemExit({exc.code})")
    return namespace


def test_python_api_page_runs_as_written(tmp_path, monkeypatch) -> None:
    namespace = run_blocks(REPO / "docs" / "python-api.md", tmp_path, monkeypatch)
    assert namespace["sft"].complete
    assert (tmp_path / "exported" / "manifest.json").is_file()
    manifest = json.loads((tmp_path / "runs" / "mid" / "manifest.json").read_text())
    source = manifest["data"]["sources"][0]
    assert source["path"].startswith("in-memory:records-") and len(source["sha256"]) == 64


def test_readme_example_runs_as_written(tmp_path, monkeypatch) -> None:
    (tmp_path / "data_samples").symlink_to(REPO / "data_samples")  # the example runs from the repository's root
    namespace = run_blocks(REPO / "README.md", tmp_path, monkeypatch)
    assert set(namespace["results"]["tasks"]) >= {"deep-fashion", "general"}
    assert (tmp_path / "runs" / "exported" / "manifest.json").is_file()


def test_import_is_lazy() -> None:
    code = ("import sys, ecomtune; help(ecomtune.run_stage); ecomtune.Recipe; "
            "heavy = sorted({'torch', 'transformers', 'datasets', 'trl', 'peft'} & set(sys.modules)); "
            "assert not heavy, heavy; assert set(ecomtune.__all__) <= set(dir(ecomtune))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "run_stage(stage" in done.stdout


def test_every_function_has_an_example() -> None:
    for name in ("load_recipe", "run_stage", "run_bench", "export_run", "load_model", "generate"):
        doc = getattr(ecomtune, name).__doc__
        assert doc and f"ecomtune.{name}(" in doc, name


def test_unknown_name() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        ecomtune.nothing  # noqa: B018


def test_dict_recipe_reports_every_mistake_at_once() -> None:
    with pytest.raises(ecomtune.ConfigError) as raised:
        ecomtune.load_recipe({"backbone": {"nam": "tiny-qwen2-vl"}, "sft": {"lora": {"r": "big"}}})
    rendered = str(raised.value)
    assert len(raised.value.problems) == 2
    assert "backbone.nam" in rendered and "did you mean 'name'" in rendered and "sft.lora.r" in rendered


def test_recipe_sources_and_overrides() -> None:
    shipped = ecomtune.load_recipe("tiny-qwen2-vl", ["sft.lora.r=8"], align={"train": {"max_steps": 3}})
    assert shipped.backbone.name == "tiny-qwen2-vl" and shipped.sft.lora.r == 8
    assert shipped.align.train.max_steps == 3 and shipped.align.train.batch_size == 8  # merged, not replaced
    again = ecomtune.load_recipe(shipped, {"sft.lora.r": 4})
    assert again.sft.lora.r == 4 and shipped.sft.lora.r == 8
    assert ecomtune.load_recipe(shipped) is shipped
    assert ecomtune.load_recipe().backbone.name == ecomtune.Recipe().backbone.name
    with pytest.raises(ecomtune.ConfigError, match="Recipe file not found"):
        ecomtune.load_recipe("no-such-recipe.yaml")
    with pytest.raises(ecomtune.ConfigError, match="Invalid --set"):
        ecomtune.load_recipe(None, ["sft.lora.r"])


def _captions(count: int) -> list[dict]:
    """Canonical records from data_samples, their image paths relative to the repository (the working folder)."""
    rows = [json.loads(line) for line in CAPTIONS.read_text().splitlines()[:count]]
    return [{**row, "images": [f"data_samples/{image}" for image in row["images"]]} for row in rows]


def _read(data, monkeypatch):
    from ecomtune.data.prepare.stage_samples import load_stage_samples
    from ecomtune.data.sources.in_memory import holding

    monkeypatch.chdir(REPO)
    with holding(data) as name:
        return name, load_stage_samples(Path(name))


def test_records_in_memory_are_checked_like_a_file(monkeypatch) -> None:
    rows = _captions(4)
    rows[2] = {**rows[2], "messages": "not a list"}
    with pytest.raises(ecomtune.DataError) as raised:
        _read(rows, monkeypatch)
    assert [problem.where for problem in raised.value.problems] == ["records[2]"]


def test_records_in_memory_name_their_fingerprint(monkeypatch) -> None:
    name, read = _read(_captions(4), monkeypatch)
    again, _ = _read(_captions(4), monkeypatch)
    assert name == again and name.startswith("in-memory:records-")
    assert len(read.samples) == 4 and read.sources[0].format == "canonical"
    from ecomtune.data.sources.in_memory import held_rows

    assert held_rows(name) is None  # released once read


def test_a_dataset_works(monkeypatch) -> None:
    import datasets

    name, read = _read(datasets.Dataset.from_list(_captions(4)), monkeypatch)
    assert name.startswith("in-memory:dataset-") and len(read.samples) == 4 and read.sources[0].format == "hf"


def test_an_iterable_dataset_with_pil_images_works(monkeypatch) -> None:
    import datasets
    from PIL import Image

    rows = [{**row, "images": [Image.open(REPO / image).convert("RGB") for image in row["images"]]}
            for row in _captions(3)]
    features = datasets.Features({"images": datasets.Sequence(datasets.Image()),
                                  "messages": datasets.Dataset.from_list(_captions(3)).features["messages"]})
    stream = datasets.Dataset.from_list(rows, features=features).to_iterable_dataset()
    _name, read = _read(stream, monkeypatch)
    assert len(read.samples) == 3


def test_a_bad_dataset_row_is_named(monkeypatch) -> None:
    import datasets

    rows = _captions(4)
    rows[2] = {**rows[2], "images": ["data_samples/images/missing.png"]}
    with pytest.raises(ecomtune.DataError) as raised:
        _read(datasets.Dataset.from_list(rows), monkeypatch)
    assert [problem.where for problem in raised.value.problems] == ["dataset[row 2]"]


def test_run_stage_refuses_bad_rows_before_any_model_loads(tmp_path, monkeypatch) -> None:
    rows = _captions(4)
    rows[2] = {**rows[2], "messages": []}
    with pytest.raises(ecomtune.DataError) as raised:
        ecomtune.run_stage("align", "tiny-qwen2-vl", tmp_path / "align", data=rows)
    assert "records[2]" in str(raised.value)
    assert not (tmp_path / "align").exists() or not any((tmp_path / "align").iterdir())


def test_errors_are_typed_never_exits(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ecomtune.ConfigError, match="not a stage"):
        ecomtune.run_stage("pretrain", None, "out")
    with pytest.raises(ecomtune.ConfigError, match="format="):
        ecomtune.export_run("run", "out", format="gguf")
    with pytest.raises(ecomtune.EcomtuneError):
        ecomtune.export_run(tmp_path / "no-run", "out")
    with pytest.raises(ecomtune.EcomtuneError):
        ecomtune.run_stage("sft", "tiny-qwen2-vl", "out", data=tmp_path / "missing.jsonl")


def test_a_list_of_sources_is_a_mixture_not_rows(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ecomtune.DataError, match=r"Data not found: missing\.jsonl"):
        ecomtune.run_stage("align", "tiny-qwen2-vl", "out", data=[{"path": "missing.jsonl", "sampling": "first:2"}])
