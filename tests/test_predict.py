"""`ecomtune predict`: batched predictions parsed like bench, resumable, and never a partial file taken as done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecomtune.bench.predict import partial_path, run_predict
from ecomtune.config.schema import ImageSettings
from ecomtune.errors import ConfigError, DataError
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def items(tmp_path) -> Path:
    """Four multi-image items of the shipped sample catalog's item-intelligence split, with absolute paths."""
    source = REPO / "data_samples" / "bench" / "item-intelligence.jsonl"
    records = [json.loads(line) for line in source.read_text().splitlines()][:4]
    for record in records:
        record["images"] = [str((source.parent / p).resolve()) for p in record["images"]]
        record.pop("fields")  # predict needs only what the prompt reads
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Interrupt(Exception):
    pass


def test_predict_writes_every_item_parsed_and_resumes_after_an_interruption(items, tmp_path):
    out = tmp_path / "preds.jsonl"
    ids = [json.loads(line)["id"] for line in items.read_text().splitlines()]

    def stop_after_first_batch(done: int, total: int) -> None:
        if done:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_predict("tiny-qwen2-vl", items, "item-intelligence", out, batch_size=2, on_progress=stop_after_first_batch)
    assert not out.exists(), "an interrupted run leaves no file that looks complete"
    first = lines(partial_path(out))
    assert [line["id"] for line in first] == ids[:2]
    with partial_path(out).open("a") as handle:  # a crash in the middle of writing the next line
        handle.write('{"id": "' + ids[2] + '", "task": "item-int')

    summary = run_predict("tiny-qwen2-vl", items, "item-intelligence", out, batch_size=2)
    assert (summary.skipped, summary.predicted, summary.total) == (2, 2, 4)
    assert not partial_path(out).exists() and [line["id"] for line in lines(out)] == ids
    assert lines(out)[:2] == first, "answers of the first run are kept as they were"
    for line in lines(out):
        assert line["task"] == "item-intelligence" and isinstance(line["raw"], str)
        assert line["parsed"] == (line["prediction"] is not None) and line["strategy"] == "all"
        assert line["images"] >= 2
    again = run_predict("tiny-qwen2-vl", items, "item-intelligence", out, batch_size=2)
    assert (again.skipped, again.predicted) == (4, 0) and len(lines(out)) == 4


def test_predict_follows_the_strategy(items, tmp_path):
    summary = run_predict("tiny-qwen2-vl", items, "item-intelligence", tmp_path / "p.jsonl", batch_size=4,
                          images=ImageSettings(strategy="primary"))
    assert summary.images_per_item == 1.0 and all(line["images"] == 1 for line in lines(tmp_path / "p.jsonl"))


def test_choice_answers_are_picked_from_the_options(catalog, tmp_path):
    source = catalog["bench"] / "deep-fashion.jsonl"
    out = tmp_path / "df.jsonl"
    run_predict("tiny-qwen2-vl", source, "deep-fashion", out, limit=3, root=catalog["bench"].parent)
    for line, record in zip(lines(out), lines(source), strict=False):
        assert line["prediction"] is None or line["prediction"] in record["options"]


def test_predict_reads_a_bench_file_where_bench_reads_it(catalog, tmp_path):
    """`bench/general.jsonl` names `../images/...`: predict takes it as bench does, without --data-root (one rule,
    `records_root`: a records file's images may reach the folder above its own)."""
    summary = run_predict("tiny-qwen2-vl", catalog["bench"] / "general.jsonl", "general", tmp_path / "g.jsonl",
                          limit=2)
    assert summary.total == 2 and len(lines(tmp_path / "g.jsonl")) == 2


@pytest.mark.parametrize(("records", "expected"), [
    ([{"id": "a", "images": []}], "needs an 'id' and a non-empty 'images' list"),
    ([{"id": "a", "images": ["x.png"]}], "file not found"),
    ([{"id": "a", "images": ["../../x.png"]}], "relative path leaves the dataset folder"),
])
def test_bad_items_fail_before_any_model_loads(tmp_path, records, expected):
    data = tmp_path / "data"
    data.mkdir()
    path = data / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DataError) as caught:
        run_predict("qwen2-vl", path, "item-intelligence", tmp_path / "out.jsonl")  # a hub alias: never reached
    assert f"{path}:1" in caught.value.render() and expected in caught.value.render()
    assert not (tmp_path / "out.jsonl").exists() and not partial_path(tmp_path / "out.jsonl").exists()


def test_missing_prompt_fields_and_duplicate_ids_are_refused(items, tmp_path, catalog):
    source = catalog["bench"] / "deep-fashion.jsonl"
    record = json.loads(source.read_text().splitlines()[0])
    record.pop("options")
    bad = tmp_path / "df.jsonl"
    bad.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"deep-fashion record lacks \['options'\]"):
        run_predict("qwen2-vl", bad, "deep-fashion", tmp_path / "o.jsonl", root=catalog["bench"].parent)
    twice = tmp_path / "twice.jsonl"
    twice.write_text(items.read_text().splitlines()[0] + "\n" + items.read_text().splitlines()[0] + "\n")
    with pytest.raises(ConfigError, match="appears more than once"):
        run_predict("qwen2-vl", twice, "item-intelligence", tmp_path / "o.jsonl")


def test_predict_command_reports_items_per_second(items, tmp_path):
    out = tmp_path / "cli.jsonl"
    result = run_cli("predict", "--model", "tiny-qwen2-vl", "--data", str(items), "--task", "item-intelligence",
                     "--out", str(out), "--images", "crops", "--batch-size", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 items (0 already answered, 4 predicted" in result.stdout and "items/s" in result.stdout
    assert all(line["strategy"] == "crops" for line in lines(out))
    unknown = run_cli("predict", "--model", "tiny-qwen2-vl", "--data", str(items), "--task", "nope", "--out",
                      str(tmp_path / "x.jsonl"))
    assert unknown.returncode == 2 and "Unknown task(s): nope" in unknown.stderr and "Traceback" not in unknown.stderr


def test_predict_resumes_only_what_the_same_settings_made(items, tmp_path):
    out = tmp_path / "preds.jsonl"
    run_predict("tiny-qwen2-vl", items, "item-intelligence", out, batch_size=2, limit=2)
    finished = out.read_bytes()
    smaller = run_predict("tiny-qwen2-vl", items, "item-intelligence", out, batch_size=2, limit=1)
    assert (smaller.skipped, smaller.predicted) == (1, 0) and out.read_bytes() == finished, "--limit never truncates"
    assert json.loads((tmp_path / "preds.jsonl.settings.json").read_text())["task"] == "item-intelligence"

    with pytest.raises(ConfigError, match=r"(?s)cannot be resumed.*images.*primary"):
        run_predict("tiny-qwen2-vl", items, "item-intelligence", out, images=ImageSettings(strategy="primary"))
    assert out.read_bytes() == finished
    replaced = run_predict("tiny-qwen2-vl", items, "item-intelligence", out, limit=1, overwrite=True,
                           images=ImageSettings(strategy="primary"))
    assert replaced.predicted == 1 and [line["strategy"] for line in lines(out)] == ["primary"]


def test_predict_never_writes_over_its_input(items):
    before = items.read_bytes()
    with pytest.raises(ConfigError, match="is the data file"):
        run_predict("tiny-qwen2-vl", items, "item-intelligence", items)
    assert items.read_bytes() == before


def test_an_interrupted_overwrite_never_passes_old_answers_off_as_new(items, tmp_path):
    out = tmp_path / "preds.jsonl"
    run_predict("tiny-qwen2-vl", items, "item-intelligence", out, batch_size=2)  # model A's answers, all four
    finished = out.read_bytes()
    primary = ImageSettings(strategy="primary")

    def stop_after_first_batch(done: int, total: int) -> None:
        if done:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_predict("tiny-qwen2-vl", items, "item-intelligence", out, images=primary, batch_size=2, overwrite=True,
                    on_progress=stop_after_first_batch)
    assert out.read_bytes() == finished, "the old file stays until the new one is complete"
    with pytest.raises(ConfigError, match="cannot be resumed"):
        run_predict("tiny-qwen2-vl", items, "item-intelligence", out, images=primary, batch_size=2)
    resumed = run_predict("tiny-qwen2-vl", items, "item-intelligence", out, images=primary, batch_size=2,
                          overwrite=True)
    assert (resumed.skipped, resumed.predicted) == (2, 2), "only this run's own partial answers are kept"
    assert {line["strategy"] for line in lines(out)} == {"primary"} and len(lines(out)) == 4


def test_a_prompt_past_the_models_context_is_refused_before_generation(catalog, tmp_path):
    """A record with a huge title (about 6,000 tokens; the tiny model's context is 4,096) is named with its
    file:line by bench and predict alike, before anything is generated or written; not run out of memory."""
    from ecomtune.bench.runner import run_bench

    bench = tmp_path / "bench"
    bench.mkdir()
    records = [json.loads(line) for line in (catalog["bench"] / "aspect-prediction.jsonl").read_text().splitlines()]
    records = records[:3]
    records[1]["title"] = "very long title " * 2000
    for record in records:
        record["images"] = [str((catalog["bench"] / image).resolve()) for image in record["images"]]
    path = bench / "aspect-prediction.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DataError) as caught:
        run_bench("tiny-qwen2-vl", "aspect-prediction", bench, out=tmp_path / "results.json")
    text = caught.value.render()
    assert "1 prompt(s) do not fit the model's context of 4096 tokens" in text and f"{path}:2" in text
    assert not (tmp_path / "results.json").exists()
    with pytest.raises(DataError, match=rf"(?s)context of 4096.*{path}:2"):
        run_predict("tiny-qwen2-vl", path, "aspect-prediction", tmp_path / "p.jsonl")
    assert not (tmp_path / "p.jsonl").exists() and not partial_path(tmp_path / "p.jsonl").exists()
