"""LLaMA-Factory's alpaca format: `instruction` (the prompt), `input` (appended to it on a new line), `output` (the
answer), and optionally `system`, `history` (earlier `[question, answer]` pairs) and `images` (paths).

The turns are built as LLaMA-Factory builds them: the history's pairs first, then the instruction with its input,
then the output. Preference rows (an `output` that is a list, ranking data) are not supervised answers and are
refused. A row with `instruction` and `output` (and no `messages`) is alpaca, whatever else it has, so it is
detected first.
"""

from __future__ import annotations

from typing import Any

from ecomtune.data.sources.base import RowFormat
from ecomtune.data.sources.turns import row_images, with_system_column
from ecomtune.errors import Problem

FIX = 'write rows as {"instruction": ..., "input": ..., "output": ..., "images": [...]} (LLaMA-Factory alpaca)'


def convert_alpaca(row: Any, where: str) -> tuple[dict[str, Any] | None, Problem | None]:
    if not isinstance(row, dict):
        return None, Problem(f"row is a {type(row).__name__}, not an object", where, "each row must be one {...}")
    instruction, query, output = row.get("instruction"), row.get("input"), row.get("output")
    if not isinstance(instruction, str) or not isinstance(output, str):
        kinds = f"instruction: {type(instruction).__name__}, output: {type(output).__name__}"
        return None, Problem(f"an alpaca row needs 'instruction' and 'output' strings ({kinds})", where,
                             FIX + "; ranking rows (a list of outputs) are preference data, not answers")
    messages: list[dict[str, Any]] = []
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(p, list) and len(p) == 2 for p in history):
        return None, Problem("'history' must be a list of [question, answer] pairs", where, FIX)
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    prompt = instruction + (f"\n{query}" if isinstance(query, str) and query else "")
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    messages, problem = with_system_column(row, messages, where)
    if messages is None:
        return None, problem
    return {"images": row_images(row), "messages": messages}, None


def is_alpaca(row: dict[str, Any]) -> bool:
    return "instruction" in row and "output" in row and "messages" not in row


ALPACA = RowFormat("alpaca", is_alpaca, convert_alpaca, detect_rank=0)
