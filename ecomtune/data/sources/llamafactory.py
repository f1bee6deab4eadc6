"""LLaMA-Factory's `dataset_info.json`: a map of dataset names to where each lies (`file_name` under the file's
folder, or `hf_hub_url`), its `formatting` (alpaca, the default, or sharegpt), its `columns` (LLaMA-Factory's names
for what each column holds) and, for sharegpt, its `tags` (the keys and role names of its turns). Optional `split`,
`subset` (a config) and `num_samples` (that many rows drawn at random, as LLaMA-Factory draws them).

A data source naming the file reads one of its datasets: `{path: data/dataset_info.json, dataset: mllm_demo}`, or
on the command line `--data 'data/dataset_info.json#mllm_demo'` (several, `#mllm_demo,alpaca_en_demo`, make a
mixture). Images are relative to the file's folder, LLaMA-Factory's default `media_dir`. Entries ecomtune cannot
train on (ranking / preference data, scripts, ModelScope-only entries, video or audio columns, tool calls) are
refused, naming the entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ecomtune.errors import ConfigError, Problem

FILE_NAME = "dataset_info.json"
# LLaMA-Factory's column names -> ecomtune's (the alpaca converter reads instruction / input / output)
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "system": "system", "images": "images"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "images": "images"}
REFUSED_COLUMNS = {"tools": "tool calls", "videos": "videos", "audios": "audio", "chosen": "preference pairs",
                   "rejected": "preference pairs", "kto_tag": "KTO labels"}
# LLaMA-Factory's tag defaults (sharegpt)
TAG_DEFAULTS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                "system_tag": "system", "observation_tag": "observation", "function_tag": "function_call"}


def is_dataset_info(path: str | Path) -> bool:
    return Path(str(path).split("#", 1)[0]).name == FILE_NAME


def split_names(path: str) -> tuple[str, list[str]]:
    """`FILE#a,b` -> (FILE, [a, b]); a path without `#` names no dataset."""
    file, _, names = str(path).partition("#")
    return file, [n.strip() for n in names.split(",") if n.strip()]


def read_dataset_info(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"Cannot read {path}: {str(exc).splitlines()[0]}",
                          fix="dataset_info.json is LLaMA-Factory's JSON map of dataset names to their files") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path} is not a LLaMA-Factory dataset_info.json: it must map dataset names to entries")
    return data


def dataset_sources(path: Path, names: list[str], base: dict[str, Any]) -> list[dict[str, Any]]:
    """The data sources (DataSource fields) the named datasets of `path` are; `base`: the source's own fields
    (sampling, image_root, ...), which win over the entry's. No name: the file's only dataset, else an error
    listing them."""
    info = read_dataset_info(path)
    if not names:
        if len(info) != 1:
            raise ConfigError(f"{path} lists {len(info)} datasets; name the ones to read",
                              fix=f"set the source's `dataset:` (one per source), or give --data '{path}#NAME' "
                              f"(several: '#A,B'); its datasets: {', '.join(list(info)[:20])}")
        names = list(info)
    problems, sources = [], []
    for name in names:
        if name not in info:
            import difflib

            close = difflib.get_close_matches(name, list(info), n=1)
            problems.append(Problem(f"no dataset {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                                    str(path), f"its datasets: {', '.join(list(info)[:20])}"))
            continue
        source, problem = _entry_source(path, name, info[name])
        if problem is not None:
            problems.append(problem)
            continue
        sources.append({**source, **{k: v for k, v in base.items() if v is not None}})
    if problems:
        raise ConfigError(f"{path}: {len(problems)} dataset(s) cannot be read", problems)
    return sources


def _entry_source(path: Path, name: str, entry: dict[str, Any]) -> tuple[dict[str, Any], Problem | None]:
    where = f"{path} [{name}]"
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        return {}, Problem(f"formatting {formatting!r} is not alpaca or sharegpt", where)
    if entry.get("ranking"):
        return {}, Problem("a ranking (preference) dataset: chosen / rejected answers, not supervised ones", where,
                           "name a supervised dataset")
    columns = entry.get("columns") or {}
    known = ALPACA_COLUMNS if formatting == "alpaca" else SHAREGPT_COLUMNS
    refused = [f"{c} ({REFUSED_COLUMNS[c]})" for c in columns if c in REFUSED_COLUMNS]
    unknown = [c for c in columns if c not in known and c not in REFUSED_COLUMNS]
    if refused or unknown:
        what = "; ".join(filter(None, [f"columns ecomtune does not train on: {', '.join(refused)}" if refused else "",
                                       f"unknown columns: {', '.join(unknown)}" if unknown else ""]))
        return {}, Problem(what, where, f"{formatting} columns ecomtune reads: {', '.join(known)}")
    if "file_name" in entry:
        location = str(path.parent / entry["file_name"])
    elif "hf_hub_url" in entry:
        location = entry["hf_hub_url"]
    else:
        return {}, Problem("the entry has neither file_name nor hf_hub_url (ModelScope, Modelers and script "
                           "entries are not read)", where, "download the data and give its file_name")
    readable = "file_name" in entry and not Path(location).is_dir()  # a folder or hub id: its files say
    source: dict[str, Any] = {"path": location, "format": formatting if readable else "auto",
                              "image_root": str(path.parent)}
    mapping = {known[c]: column for c, column in columns.items() if known[c] != column}
    if mapping:
        source["columns"] = mapping
    tags = {**TAG_DEFAULTS, **(entry.get("tags") or {})}
    if formatting == "sharegpt" and tags != TAG_DEFAULTS:
        source["tags"] = {k: v for k, v in tags.items() if k in TAG_DEFAULTS}
    if entry.get("split"):
        source["split"] = entry["split"]
    if entry.get("subset"):
        source["config"] = entry["subset"]
    if entry.get("num_samples"):
        source["sampling"] = f"random:{int(entry['num_samples'])}"
    return source, None


def retagged_turns(turns: Any, tags: dict[str, str]) -> Any:
    """A sharegpt conversation written with an entry's own `tags`, as `from`/`value` turns with ecomtune's speaker
    names (user, assistant, system; observation and function turns keep a name that is refused as a tool turn)."""
    if not isinstance(turns, list):
        return turns
    speakers = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system",
                tags["observation_tag"]: "observation", tags["function_tag"]: "function_call"}
    out = []
    for turn in turns:
        if isinstance(turn, dict) and tags["role_tag"] in turn:
            speaker = turn[tags["role_tag"]]
            out.append({"from": speakers.get(speaker, speaker), "value": turn.get(tags["content_tag"])})
        else:
            out.append(turn)
    return out
