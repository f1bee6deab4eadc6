"""The benchmark tasks: each turns records into prompts, parses answers, scores them, and says which one number
is its headline. `TASKS` is the only list of tasks: the runner, the reports, the verdicts, the training probe and
the lmms-eval export read everything task-specific from a task's entry, so a new task is one `register` call.

Record formats (one JSON object per line in `<data>/<task>.jsonl`; image paths relative to the file):
- aspect-prediction: `{"id", "images", "subset", "aspects": {name: value}, "title"?, "category"?}`
- deep-fashion: `{"id", "images", "subset", "attribute", "options": [...], "answer"}`
- attribute-extraction: `{"id", "images", "attributes": {name: value}}`
- item-intelligence: `{"id", "images", "category", "fields": {section: {name: value}}}`
- general: `{"id", "images", "attribute" (the skill), "question"?, "options": [...], "answer"}`
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ecomtune.errors import ConfigError
from ecomtune.registries import Registry
from ecomtune.tasks import metrics, prompts, scoring
from ecomtune.tasks.judging import Judge
from ecomtune.tasks.scoring import Scored


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    description: str
    max_new_tokens: int
    prompt: Callable[[dict], str]
    score: Callable[[list[dict], list[str], Judge], Scored]
    headline: str  # the key in `score`'s scores of the one number reports, verdicts and the training probe read
    passed: Callable[[dict], bool]  # whether one example (its scorer's detail) was answered fully right
    parse: Callable[[dict, str], Any] = lambda record, answer: answer  # the answer as scoring reads it
    prompt_fields: tuple[str, ...] = ()  # record keys the prompt reads (predict needs only these)
    reference_fields: tuple[str, ...] = ()  # record keys scoring reads (bench needs these too)
    groups: tuple[str, ...] = ()  # score keys breaking the headline down per named group (charted in the report)
    attribute_table: bool = False  # `ecomtune bench` prints its per-attribute accuracy beside the baselines
    beats_majority: tuple[str, ...] = ()  # attributes whose accuracy should beat the majority-class baseline
    retention: bool = False  # a general-skill probe: adapting should keep its score, not raise it (not in-domain)


TASKS: Registry[Task] = Registry("task")


def register(task: Task) -> Task:
    """Add a benchmark task; its name must be new."""
    return TASKS.register(task)


def task(name: str) -> Task:
    """The task of that name."""
    return resolve_tasks(name)[0]


def resolve_tasks(names: str) -> list[Task]:
    """`all`, or a comma list of task names, as the command line takes them."""
    if names.strip() == "all":
        return list(TASKS.values())
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in TASKS]
    if unknown:
        raise ConfigError(f"Unknown task(s): {', '.join(unknown)}", fix=f"choose from all, {', '.join(TASKS)}")
    return [TASKS[n] for n in chosen]


def headline_metric(name: str) -> str:
    """The headline metric of a task; a results file's task this version does not know reads `accuracy`."""
    return TASKS[name].headline if name in TASKS else "accuracy"


def headline_score(results: dict[str, Any], name: str) -> float | None:
    """The headline number of task `name` in a results file; None when the task or the metric is missing."""
    value = results["tasks"].get(name, {}).get("scores", {}).get(headline_metric(name))
    return float(value) if isinstance(value, (int, float)) else None


def example_passed(name: str, example: dict[str, Any]) -> bool:
    """Whether one example of task `name` was answered fully right, from the detail its scorer recorded."""
    return TASKS[name].passed(example) if name in TASKS else False


register(Task(
    name="aspect-prediction", description="values of named aspects; string match after normalisation",
    max_new_tokens=64, prompt=lambda r: prompts.aspect_prompt(list(r["aspects"]), r.get("title"), r.get("category")),
    score=scoring.score_aspects, parse=lambda r, a: metrics.parse_key_values(a) or None, headline="accuracy",
    passed=scoring.all_aspects_right, prompt_fields=("aspects",), reference_fields=("aspects",),
    groups=("by_aspect",)))
register(Task(
    name="deep-fashion", description="pick the attribute value from given options; accuracy vs baselines",
    max_new_tokens=8, prompt=lambda r: prompts.choice_prompt(r["attribute"], r["options"]),
    score=scoring.score_choices, parse=scoring.parse_choice, headline="accuracy", passed=scoring.choice_right,
    prompt_fields=("attribute", "options"), reference_fields=("answer",), groups=("by_attribute",),
    attribute_table=True, beats_majority=("colour", "pattern")))
register(Task(
    name="attribute-extraction",
    description="schema-free JSON of visible attributes; key-value P/R/F1, hallucinations", max_new_tokens=96,
    prompt=lambda r: prompts.extraction_prompt(), score=scoring.score_extraction, parse=scoring.parse_json,
    headline="f1", passed=scoring.extraction_exact, reference_fields=("attributes",)))
register(Task(
    name="item-intelligence", description="compliance JSON from all images; judged F1 and verifiability",
    max_new_tokens=192, prompt=lambda r: prompts.compliance_prompt(len(r["images"])), score=scoring.score_compliance,
    parse=scoring.parse_json, headline="f1", passed=scoring.compliance_exact, reference_fields=("fields",)))
register(Task(
    name="general", description="general skills on generic scenes (count, colour, shape, spatial, existence, "
    "reading); accuracy per skill vs baselines", max_new_tokens=6,
    prompt=lambda r: prompts.general_prompt(prompts.general_question(r), r["options"]), score=scoring.score_choices,
    parse=scoring.parse_choice, headline="accuracy", passed=scoring.choice_right,
    prompt_fields=("attribute", "options"), reference_fields=("answer",), groups=("by_attribute",), retention=True))
