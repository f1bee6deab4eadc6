"""A new benchmark task is one registry entry: registered here and nowhere else, the bench runs and scores it, and
the reports, the verdicts and the lmms-eval export read its headline from that entry."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from PIL import Image
from rich.console import Console

from ecomtune.bench.html_report import render_report
from ecomtune.bench.lmms_eval_tasks import scalar_metrics
from ecomtune.bench.result_tables import columns_table, results_table
from ecomtune.bench.runner import run_bench
from ecomtune.bench.verdicts import verdicts
from ecomtune.tasks import metrics
from ecomtune.tasks.registry import TASKS, Task, example_passed, headline_score, register, resolve_tasks, task

NAME = "colour-word"


def score_words(records: list[dict], answers: list[str], judge) -> tuple[dict, list[dict]]:
    hits = [metrics.values_match(a, r["answer"]) for r, a in zip(records, answers, strict=True)]
    return ({"hit_rate": metrics.accuracy(hits), "answered": sum(bool(a) for a in answers) / max(1, len(answers))},
            [{"id": r["id"], "hit": ok} for r, ok in zip(records, hits, strict=True)])


@pytest.fixture
def colour_word():
    """The throwaway task, registered for one test (its headline is not a metric any shipped task uses)."""
    entry = register(Task(name=NAME, description="one word: the colour of the picture", max_new_tokens=4,
                          prompt=lambda r: "What colour is this picture? Answer with one word.", score=score_words,
                          headline="hit_rate", passed=lambda example: bool(example.get("hit")),
                          reference_fields=("answer",)))
    try:
        yield entry
    finally:
        TASKS.pop(NAME)


def test_a_name_is_registered_once(colour_word):
    assert task(NAME) is colour_word and colour_word in resolve_tasks("all")
    with pytest.raises(ValueError, match="registered already"):
        register(colour_word)


def test_one_entry_is_benched_and_reported(colour_word, tmp_path):
    data = tmp_path / "bench"
    (data / "images").mkdir(parents=True)
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (56, 56), colour).save(data / "images" / f"{i}.png")
    (data / f"{NAME}.jsonl").write_text("".join(json.dumps({"id": f"w{i}", "images": [f"images/{i}.png"],
                                                            "answer": colour}) + "\n"
                                                for i, colour in enumerate(("red", "blue"))))
    after = run_bench("tiny-qwen2-vl", NAME, data, limit=2, batch_size=2)
    entry = after["tasks"][NAME]
    assert entry["n"] == 2 and set(entry["scores"]) == {"hit_rate", "answered"}
    assert [e["reference"] for e in entry["examples"]] == [{"answer": "red"}, {"answer": "blue"}]
    assert scalar_metrics(colour_word) == ["hit_rate", "answered"], "the export lists the headline first"

    # the headline every reader takes is the entry's `hit_rate`, not a default
    after["tasks"][NAME]["scores"].update(hit_rate=0.5, answered=0.9)
    base = json.loads(json.dumps(after))
    base["tasks"][NAME]["scores"].update(hit_rate=0.25, answered=1.0)
    assert headline_score(after, NAME) == 0.5
    found = {v.claim: v for v in verdicts(base, base, after)}
    claim = found[f"{NAME} hit_rate rises above the base"]
    assert claim.passed and claim.figures == "0.500 after vs 0.250 full precision, 0.250 4-bit"

    console = Console(width=200, record=True)
    console.print(columns_table([("base", base), ("after", after)]))
    console.print(results_table(after))
    rows = [[cell.strip() for cell in line.split("│") if cell.strip()] for line in console.export_text().splitlines()]
    assert [NAME, "hit_rate", "0.250", "0.500"] in rows, "columns_table: the headline per column"
    assert [NAME, "hit_rate", "0.500", "2"] == next(r for r in rows if r[:1] == [NAME] and len(r) == 5)[:4]

    class Page(HTMLParser):
        """The task's score row (cell texts) and its example cards (their classes)."""

        def __init__(self) -> None:
            super().__init__()
            self.row: list[str] = []
            self.cards: list[str] = []
            self._in_row = False

        def handle_starttag(self, tag, attrs):
            found = dict(attrs)
            self._in_row = self._in_row or (tag == "tr" and found.get("data-task") == NAME)
            if tag == "div" and found.get("data-task") == NAME:
                self.cards.append(found["class"])

        def handle_endtag(self, tag):
            self._in_row = self._in_row and tag != "tr"

        def handle_data(self, data):
            if self._in_row and data.strip():
                self.row.append(data.strip())

    page = Page()
    page.feed(render_report([("base", base), ("after", after)]))
    assert page.row[:4] == [NAME, "hit_rate", "0.250", "0.500"]
    passed = [example_passed(NAME, e) for e in entry["examples"]]
    assert sorted(page.cards) == sorted(f"card {'pass' if ok else 'fail'}" for ok in passed)
