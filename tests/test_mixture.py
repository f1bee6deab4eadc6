"""Mixtures: the sampling rules by hand, seeded draws that every process agrees on, LLaVA-OneVision mixture YAMLs,
and a stage reading several sources of different formats at once (with the realised mixture in `plan`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ecomtune.config.recipe_files import load_recipe
from ecomtune.config.sampling import parse_rule
from ecomtune.config.schema import DataSource
from ecomtune.data.prepare.mixture import select_rows
from ecomtune.data.prepare.stage_samples import load_stage_samples
from ecomtune.errors import ConfigError, DataError
from tests.conftest import REPO, run_cli


def rows(rule: str, available: int, seed: int = 0, salt: str = "") -> list[int]:
    return select_rows(parse_rule(rule), available, seed, salt).tolist()


def test_rules_take_the_rows_they_name():
    assert rows("all", 4) == [0, 1, 2, 3]
    assert rows("first:3", 10) == [0, 1, 2] and rows("end:3", 10) == [7, 8, 9]
    assert rows("first:10%", 25) == [0, 1, 2], "a percentage is rounded up, as OneVision does"
    assert rows("end:50%", 5) == [2, 3, 4]
    assert rows("first:20", 5) == [0, 1, 2, 3, 4], "a count above the rows takes them all"
    assert rows("first:250%", 4) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1], "above 100% repeats the source"
    assert rows("end:150%", 4) == [0, 1, 2, 3, 2, 3]
    assert rows("first:5", 0) == []


def test_random_is_seeded_distinct_and_independent_per_source():
    drawn = rows("random:4", 20, seed=1, salt="a")
    assert drawn == rows("random:4", 20, seed=1, salt="a") and len(set(drawn)) == 4 and drawn == sorted(drawn)
    assert drawn != rows("random:4", 20, seed=2, salt="a")
    assert drawn != rows("random:4", 20, seed=1, salt="b")
    repeated = rows("random:150%", 4, seed=3)
    assert sorted(repeated[:4]) == [0, 1, 2, 3] and len(repeated) == 6 and len(set(repeated[4:])) == 2


@pytest.mark.parametrize("bad", ["firts:10", "first:0", "first:1.5", "first:0%", "random:", "10%", "all:3"])
def test_unknown_or_empty_rules_are_refused(bad):
    with pytest.raises(ValueError, match="sampling rule"):
        parse_rule(bad)


@pytest.mark.parametrize("text, line, message", [
    ("sft:\n  data:\n    - path: a.jsonl\n      sampling: frist:10%\n", 4, "unknown sampling rule 'frist:10%'"),
    ("sft:\n  data:\n    - path: a.jsonl\n    - path: b.jsonl\n      sampling: first:100000000%\n", 5,
     "repeat the source 1,000,000 times"),
], ids=["typo", "runaway repeat"])
def test_a_bad_rule_in_a_recipe_is_refused_at_its_line(tmp_path, text, line, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=rf"(?s){re.escape(str(recipe))}:{line}: .*{re.escape(message)}"):
        load_recipe(recipe)


def test_each_entry_of_a_mixture_names_its_own_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sft:\n  data:\n    - path: a.jsonl\n      sampling: first:10\n    - path: b.jsonl\n"
                      "      sampling: frist:10\n    - path: c.jsonl\n      sampling: random:0\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(recipe)
    problems = {p.where: p.what for p in caught.value.problems}
    assert "unknown sampling rule 'frist:10'" in problems[f"{recipe}:6"]
    assert "'random:0'" in problems[f"{recipe}:8"] and len(problems) == 2


def test_a_rule_repeats_its_source_at_most_100_times():
    assert rows("first:10000%", 3)[-3:] == [0, 1, 2] and len(rows("first:10000%", 3)) == 300
    with pytest.raises(ValueError, match=r"repeat the source 1,000,000 times; at most 100 \(first:10000%\)"):
        parse_rule("first:100000000%")
    assert rows("first:100000000", 10) == list(range(10)), "a count takes at most every row: no repeats"


def test_a_billion_row_mixture_is_refused_before_any_row_is_read(tmp_path):
    """Ten entries, each 100 passes over a million rows: refused from the row counts alone (no row is parsed:
    they are not even valid records), in seconds and without building the billion-row order."""
    import resource
    import time

    big = tmp_path / "big.jsonl"
    big.write_bytes(b"{}\n" * 1_000_000)
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        load_stage_samples([DataSource(path=str(big), format="canonical", sampling="first:10000%")] * 10,
                           title="sft.data")
    text = caught.value.render()
    assert "would realise 1,000,000,000 rows, more than the 100,000,000" in text and "nothing was read" in text
    assert text.count(f"{big}: first:10000% of 1,000,000 rows takes 100,000,000") == 10
    print(f"refused in {time.monotonic() - started:.1f}s, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")


def llava_captions(catalog, folder: Path) -> Path:
    """The catalog's captions as a LLaVA JSON array (one global image folder: the catalog)."""
    rows = []
    for n, line in enumerate(catalog["captions"].read_text().splitlines()):
        record = json.loads(line)
        question = record["messages"][0]["content"][1]["text"]
        answer = record["messages"][1]["content"][0]["text"]
        rows.append({"id": str(n), "image": record["images"][0],
                     "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                       {"from": "gpt", "value": answer}]})
    path = folder / "llava.json"
    path.write_text(json.dumps(rows))
    return path


def test_a_stage_reads_sources_of_different_formats_with_their_rules(catalog, tmp_path):
    llava = llava_captions(catalog, tmp_path)
    sources = [DataSource(path=str(llava), sampling="first:5", image_root=catalog["captions"].parent),
               DataSource(path=str(catalog["instruct"]), sampling="random:30%")]
    read = load_stage_samples(sources, seed=7)
    instruct_rows = sum(1 for line in catalog["instruct"].read_text().splitlines() if line.strip())
    taken = -(-instruct_rows * 30 // 100)
    assert [(s.format, s.available, s.sampling, s.taken) for s in read.sources] == [
        ("llava", len(json.loads(llava.read_text())), "first:5", 5), ("canonical", instruct_rows, "random:30%", taken)]
    assert [s.origin for s in read.samples] == [0] * 5 + [1] * taken
    assert read.samples[0].source == f"{llava}[row 0]" and read.samples[0].images[0].endswith(".png")
    assert read.samples[0].messages[0]["content"][0] == {"type": "image"}
    again = load_stage_samples(sources, seed=7)
    assert [s.source for s in again.samples] == [s.source for s in read.samples]
    assert [s.source for s in load_stage_samples(sources, seed=8).samples] != [s.source for s in read.samples]
    read.count_tokens([10] * len(read.samples))
    assert read.sources[0].share == pytest.approx(5 / (5 + taken))


def test_every_process_takes_the_same_rows(catalog):
    code = ("import json, sys; from ecomtune.config.schema import DataSource; "
            "from ecomtune.data.prepare.stage_samples import load_stage_samples; "
            "read = load_stage_samples([DataSource(path=sys.argv[1], sampling='random:40%')], seed=3); "
            "print(json.dumps([s.source for s in read.samples]))")
    taken = []
    for rank in ("0", "1"):
        env = {**os.environ, "RANK": rank, "LOCAL_RANK": rank}
        done = subprocess.run([sys.executable, "-c", code, str(catalog["instruct"])], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        taken.append(json.loads(done.stdout))
    assert taken[0] == taken[1] and taken[0]


def onevision_yaml(catalog, folder: Path, rule: str = "first:50%", extra: str = "") -> Path:
    llava = llava_captions(catalog, folder)
    path = folder / "mix.yaml"
    path.write_text(f"datasets:\n  - json_path: {llava.name}\n    sampling_strategy: {rule}\n"
                    f"    image_root: {catalog['captions'].parent}\n{extra}"
                    f"  - json_path: {catalog['instruct']}\n    sampling_strategy: end:4\n")
    return path


def test_a_llava_onevision_yaml_is_a_mixture(catalog, tmp_path):
    read = load_stage_samples(onevision_yaml(catalog, tmp_path))
    assert [(s.sampling, s.format) for s in read.sources] == [("first:50%", "llava"), ("end:4", "canonical")]
    assert sum(s.origin == 1 for s in read.samples) == 4

    bad = onevision_yaml(catalog, tmp_path, rule="frist:50%", extra="    weight: 2\n")
    with pytest.raises(ConfigError, match=r"(?s)mix\.yaml:2.*unknown key 'weight'.*mix\.yaml:2.*frist"):
        load_stage_samples(bad)


@pytest.mark.slow
def test_plan_prints_the_realised_mixture(catalog, tmp_path):
    mix = onevision_yaml(catalog, tmp_path)
    out = tmp_path / "plan.json"
    result = run_cli("plan", "recipes/tiny-qwen2-vl.yaml", "--stage", "sft", "--data", str(mix), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mixture" in result.stdout and "first:50%" in result.stdout and "end:4" in result.stdout
    mixture = json.loads(out.read_text())["mixture"]
    assert [m["taken"] for m in mixture][1] == 4 and sum(m["share"] for m in mixture) == pytest.approx(1.0)
    assert all(m["tokens"] > 0 for m in mixture)
