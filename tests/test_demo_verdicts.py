"""The demo's verdicts on three results files, and how it prints them: a failure is red and named, never hidden."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text

from ecomtune.bench.result_tables import columns_table
from ecomtune.bench.verdicts import verdicts
from ecomtune.errors import ConfigError
from ecomtune.studies.demo import catalog_sources, demo_recipe, is_replay, print_verdicts, probe_story, replay_share


def results(general: float, colour: float = 0.2, pattern: float = 0.3, f1: float = 0.1, skills: bool = True) -> dict:
    by_skill = {"count": {"accuracy": general, "majority_baseline": 0.25, "random_baseline": 0.25, "n": 30}}
    return {"model": {"spec": "m"}, "tasks": {
        "aspect-prediction": {"scores": {"accuracy": f1}},
        "deep-fashion": {"scores": {"accuracy": (colour + pattern) / 2, "by_attribute": {
            "colour": {"accuracy": colour, "majority_baseline": 0.25, "random_baseline": 0.1, "n": 20},
            "pattern": {"accuracy": pattern, "majority_baseline": 0.4, "random_baseline": 0.25, "n": 20}}}},
        "attribute-extraction": {"scores": {"f1": f1}},
        "item-intelligence": {"scores": {"f1": f1}},
        "general": {"scores": {"accuracy": general, **({"by_attribute": by_skill} if skills else {})}}}}


def by_claim(found) -> dict[str, bool]:
    return {v.claim.split(" (")[0]: v.passed for v in found}


def test_all_pass_when_every_claim_holds():
    found = verdicts(results(0.80), results(0.78), results(0.75, colour=0.6, pattern=0.5, f1=0.4))
    assert all(v.passed for v in found) and len(found) == 8
    claims = by_claim(found)
    assert claims["general skill kept"] and claims["the base has general skill"]


def test_each_claim_fails_on_its_own():
    base, base_4bit = results(0.80), results(0.78)
    forgot = by_claim(verdicts(base, base_4bit, results(0.72, colour=0.6, pattern=0.5, f1=0.4)))
    assert not forgot["general skill kept"] and forgot["deep-fashion colour beats its majority-class baseline"]
    at_the_limit = by_claim(verdicts(base, base_4bit, results(0.73, colour=0.6, pattern=0.5, f1=0.4)))
    assert at_the_limit["general skill kept"], "0.05 below the 4-bit base is still within the limit"
    no_pattern = by_claim(verdicts(base, base_4bit, results(0.78, colour=0.6, pattern=0.4, f1=0.4)))
    assert not no_pattern["deep-fashion pattern beats its majority-class baseline"]
    # an in-domain score must beat both base columns: here the 4-bit base scored higher than after
    quant_higher = by_claim(verdicts(results(0.8, f1=0.1), results(0.78, f1=0.5), results(0.78, 0.6, 0.5, f1=0.4)))
    assert not quant_higher["item-intelligence f1 rises above the base"]
    weak_base = by_claim(verdicts(results(0.5), results(0.5), results(0.5, 0.6, 0.5, f1=0.4)))
    assert not weak_base["the base has general skill"] and weak_base["general skill kept"]


def test_a_failed_verdict_is_printed_in_red_and_the_table_shows_three_columns_and_skills():
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=200)
    passed = print_verdicts(console, verdicts(results(0.80), results(0.78), results(0.60, 0.6, 0.5, f1=0.4)))
    text = stream.getvalue()
    assert not passed and "FAIL" in text and "\x1b[1;31m" in text  # bold red
    failed = Text.from_ansi(next(line for line in text.splitlines() if "FAIL" in line)).plain
    assert "general skill kept" in failed and "0.600 after vs 0.780 4-bit base (-0.180)" in failed

    stream = io.StringIO()
    Console(file=stream, width=200).print(columns_table([("base", results(0.8)), ("base 4-bit", results(0.78)),
                                                         ("after", results(0.75))]))
    table = stream.getvalue()
    assert "base 4-bit" in table and "general: count" in table and "0.250 / 0.250" in table
    assert "0.800" in table and "0.780" in table and "0.750" in table


def test_the_probe_story_says_what_the_guard_decided_and_from_which_baseline():
    history = [{"step": 0, "general": 0.6}, {"step": 50, "general": 0.48}]
    probe = {"history": history, "baseline_general": 0.6, "baseline_from": "step 0 of runs/align", "warned": [],
             "stopped": None}
    assert probe_story({}) == "no probe"
    within = Text.from_markup(probe_story({"probe": probe})).plain
    assert within == ("general probe 0.60@0, 0.48@50 (baseline 0.60, step 0 of runs/align); guard: within the limit "
                      "throughout, trained to the end")
    warned = Text.from_markup(probe_story({"probe": {**probe, "warned": [{"step": 50, "drop": 0.12}]}})).plain
    assert warned.endswith("guard warned (fell 0.12 at step 50 below the baseline), trained to the end")
    stopped = {**probe, "stopped": {"step": 50, "weights_from_step": 0, "reason": "fell"}}
    assert Text.from_markup(probe_story({"probe": stopped})).plain.endswith("guard stopped at step 50, weights of "
                                                                          "step 0 kept")


def test_the_demo_points_every_shipped_source_at_the_catalog_file_of_the_same_name(tmp_path):
    names = {"captions": "captions.jsonl", "mid": "mid.jsonl", "instruct": "instruct.jsonl",
             "compliance": "compliance.jsonl", "general_train": "general-train.jsonl"}
    data = {key: tmp_path / name for key, name in names.items()} | {"bench": tmp_path / "bench"}
    recipe = demo_recipe(data, [])
    sft = [source.model_dump(mode="json") for source in recipe.sft.data]
    assert [Path(s["path"]) for s in sft] == [data["instruct"], data["compliance"], data["general_train"]]
    assert [s["sampling"] for s in sft] == ["all", "first:400%", "all"], "sampling rules are kept"
    assert [is_replay(s) for s in sft] == [False, False, True]
    manifest = {"data": {"sources": [{**s, "share": share} for s, share in zip(sft, (0.5, 0.2, 0.3), strict=True)]}}
    assert replay_share(manifest) == 0.3
    with pytest.raises(ConfigError, match=r"writes no listings\.jsonl") as raised:
        catalog_sources("data/listings.jsonl", data)
    assert "general-train.jsonl" in raised.value.fix, "the fix names the files the catalog does write"
