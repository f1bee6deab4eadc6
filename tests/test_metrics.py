"""Metrics are pure functions: hand-computed cases, including the ugly answers models really give."""

from __future__ import annotations

import pytest

from ecomtune.tasks import metrics
from ecomtune.tasks.judging import FieldMatchJudge, judge_item, parse_verdict
from ecomtune.tasks.registry import TASKS


@pytest.mark.parametrize(("raw", "expected"), [
    ("  Red. ", "red"),
    ("Cotton and WOOL", "cotton, wool"),
    ("wool, cotton", "cotton, wool"),
    ("Gray", "grey"),
    ("Long-Sleeved", "long sleeve"),
    ("V Neck", "v-neck"),
    (["Casual", "striped"], "casual, striped"),
    ("Men's", "men"),
    (None, ""),
    ("", ""),
])
def test_normalise(raw, expected):
    assert metrics.normalise(raw) == expected


def test_normalise_key():
    assert metrics.normalise_key("Sleeve_Length") == metrics.normalise_key("sleeve-length") == "sleeve length"


def test_values_match_ignores_order_and_synonyms_but_not_emptiness():
    assert metrics.values_match("wool and cotton", "Cotton, Wool")
    assert metrics.values_match("polka dots", "dotted")
    assert not metrics.values_match("", "")
    assert not metrics.values_match("red", "dark red")


@pytest.mark.parametrize(("text", "expected"), [
    ('{"colour": "red"}', {"colour": "red"}),
    ('Sure! ```json\n{"colour": "red", "pattern": "solid",}\n```', {"colour": "red", "pattern": "solid"}),
    ("{'colour': 'red'}", {"colour": "red"}),
    ('{"colour": "red", "pattern": "str', {"colour": "red", "pattern": "str"}),  # truncated generation
    ('{"a": {"b": "c"', {"a": {"b": "c"}}),
    ('{"colour": "red", "colour": "blue"}', {"colour": "blue"}),  # duplicate keys: last wins
    ("no json here", None),
    ("", None),
    ("[1, 2]", None),
])
def test_parse_json_object(text, expected):
    assert metrics.parse_json_object(text) == expected


def test_parse_key_values_falls_back_to_lines():
    assert metrics.parse_key_values("Colour: red; Pattern: striped") == {"Colour": "red", "Pattern": "striped"}
    assert metrics.parse_key_values("nothing useful") == {}


@pytest.mark.parametrize(("answer", "expected"), [
    ("long sleeve", "long sleeve"),
    ("It has long sleeves.", "long sleeve"),
    ("Long-sleeved", "long sleeve"),
    ("short sleeve or long sleeve", None),  # ambiguous
    ("banana", None),
    ("", None),
])
def test_pick_option(answer, expected):
    assert metrics.pick_option(answer, ["short sleeve", "long sleeve", "sleeveless"]) == expected


def test_baselines_by_hand():
    assert metrics.majority_baseline(["red", "red", "blue", "Red"]) == 0.75
    assert metrics.random_baseline([4, 2]) == pytest.approx((0.25 + 0.5) / 2)
    assert metrics.majority_baseline([]) == 0.0


def test_prf_by_hand():
    # 2 correct of 4 predicted, 5 in the reference
    assert metrics.prf(2, 4, 5) == metrics.PRF(0.5, 0.4, pytest.approx(2 * 0.5 * 0.4 / 0.9))
    assert metrics.prf(0, 0, 3) == metrics.PRF(0.0, 0.0, 0.0)


def test_key_value_score_counts_hallucinations():
    score = metrics.score_key_values({"Colour": "Red", "pattern": "dots", "material": "silk"},
                                     {"colour": "red", "pattern": "striped", "sleeve length": "long sleeve"})
    assert score == metrics.KeyValueScore(true_positives=1, predicted=3, reference=3, hallucinated=1)


def test_field_match_judge_verdicts():
    reference = {"identifiers": {"brand": "ACME", "model number": "AB-123"}, "origin": {"country": "Italy"}}
    predicted = {"identifiers": {"brand": "acme", "model number": "AB-124"}, "safety": {"warning": "Hot"}}
    assert judge_item(FieldMatchJudge(), predicted, reference) == {
        "correct": 1, "incorrect": 1, "unverifiable": 1, "reference": 3}


def test_parse_verdict():
    assert parse_verdict("Correct.") == "correct"
    assert parse_verdict("The claim is INCORRECT") == "incorrect"
    assert parse_verdict("no idea") == "unverifiable"


def records_and_answers():
    aspects = [{"id": "1", "subset": "fashion", "aspects": {"Colour": "red", "Pattern": "striped"}},
               {"id": "2", "subset": "general", "aspects": {"Colour": "blue"}}]
    return aspects, ['{"colour": "Red", "pattern": "solid"}', "garbage"]


def test_aspect_scores_by_hand():
    records, answers = records_and_answers()
    scores, details = TASKS["aspect-prediction"].score(records, answers, FieldMatchJudge())
    assert scores["accuracy"] == pytest.approx(1 / 3)  # 1 of 3 aspect slots
    assert scores["parse_rate"] == 0.5
    assert scores["by_subset"] == {"fashion": 0.5, "general": 0.0}
    assert details[0]["correct"] == {"Colour": True, "Pattern": False}


def test_choice_scores_with_baselines_and_unparsed_answers():
    records = [{"id": str(i), "subset": "shirts", "attribute": "colour", "options": ["red", "blue"], "answer": a}
               for i, a in enumerate(["red", "red", "blue", "red"])]
    scores, _ = TASKS["deep-fashion"].score(records, ["red", "Blue", "I cannot tell", "red!"], FieldMatchJudge())
    assert scores["accuracy"] == 0.5
    assert scores["unparsed_rate"] == 0.25
    assert scores["by_attribute"]["colour"] == {"accuracy": 0.5, "majority_baseline": 0.75, "random_baseline": 0.5,
                                                "n": 4}


def test_extraction_scores_never_crash_on_empty_output():
    records = [{"id": "1", "attributes": {"colour": "red", "pattern": "solid"}}, {"id": "2", "attributes": {"a": "b"}}]
    scores, _ = TASKS["attribute-extraction"].score(records, ['{"colour": "red", "size": "M"}', ""], FieldMatchJudge())
    assert scores["json_parse_rate"] == 0.5
    assert scores["precision"] == 0.5 and scores["recall"] == pytest.approx(1 / 3)
    assert scores["hallucination_rate"] == 0.5


def test_compliance_scores_by_hand():
    records = [{"id": "1", "fields": {"identifiers": {"brand": "ACME"}, "origin": {"country": "Italy"}}}]
    answer = '{"identifiers": {"brand": "ACME"}, "origin": {"country": "China"}, "safety": {"marks": "CE"}}'
    scores, _ = TASKS["item-intelligence"].score(records, [answer], FieldMatchJudge())
    assert scores["precision"] == pytest.approx(1 / 3) and scores["recall"] == 0.5
    assert scores["verifiable_correct"] == pytest.approx(1 / 3)
    assert scores["verifiable_incorrect"] == pytest.approx(1 / 3)
    assert scores["unverifiable"] == pytest.approx(1 / 3)
