"""A data format is one unit: a `RowFormat` (name, which rows it claims, how a row converts) listed in the one
registry, `ecomtune.data.sources.formats.FORMATS`. Listing a new one there is all it takes for `format: auto`
to detect it and for a source and a stage's mixture to read it; config's `format:` names are the registry's."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, get_args

import pytest
from PIL import Image

from ecomtune.config.schema import DataFormat, DataSource
from ecomtune.data.prepare.stage_samples import load_stage_samples
from ecomtune.data.sources import formats, open_source
from ecomtune.data.sources.base import RowFormat
from ecomtune.errors import DataError, Problem


def convert_qa(row: Any, where: str) -> tuple[dict[str, Any] | None, Problem | None]:
    """A made-up layout: `{"q": question, "a": answer, "pic": image path}`."""
    if not isinstance(row.get("q"), str):
        return None, Problem("'q' must be a string", where)
    images = [row["pic"]] if row.get("pic") else []
    return {"images": images, "messages": [{"role": "user", "content": row["q"]},
                                           {"role": "assistant", "content": row["a"]}]}, None


QA = RowFormat("qa", lambda row: "q" in row and "a" in row, convert_qa)


@pytest.fixture
def qa_registered(monkeypatch: pytest.MonkeyPatch) -> RowFormat:
    """The throwaway format listed in the registry for one test; nothing else is edited."""
    monkeypatch.setattr(formats, "FORMATS", [*formats.FORMATS, QA])
    return QA


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), "red").save(buffer, "PNG")
    (tmp_path / "red.png").write_bytes(buffer.getvalue())
    rows = [{"q": "<image>\nColour?", "a": "red", "pic": "red.png"}, {"q": "Hello?", "a": "hi"},
            {"q": "Again?", "a": "yes"}]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_config_names_the_registry_s_formats():
    """config (below data) cannot import the registry, so its `format:` literal is kept equal to it here."""
    assert get_args(DataFormat) == ("auto", *formats.format_names())


def test_a_new_format_is_detected_and_converted_by_a_source(qa_registered, qa_file):
    assert "qa" in formats.format_names()
    source = open_source(qa_file)
    assert (source.format, source.rows) == ("qa", 3)
    (where, record, problem), = source.records([1])
    assert problem is None and where == f"{qa_file}:2"
    assert record == {"images": [], "messages": [{"role": "user", "content": "Hello?"},
                                                 {"role": "assistant", "content": "hi"}]}
    assert open_source(qa_file, format="qa").format == "qa", "its name is a format a source may give"


def test_a_mixture_reads_a_new_format(qa_registered, qa_file):
    read = load_stage_samples([DataSource(path=str(qa_file), sampling="first:2")], workers=1)
    assert [(u.format, u.available, u.taken) for u in read.sources] == [("qa", 3, 2)]
    samples = list(read.samples)
    assert [s.messages[-1]["content"] for s in samples] == [[{"type": "text", "text": "red"}],
                                                            [{"type": "text", "text": "hi"}]]
    assert len(samples[0].images) == 1 and not samples[1].images


def test_without_the_format_its_rows_are_not_told(qa_file):
    with pytest.raises(DataError, match="Cannot tell the format"):
        open_source(qa_file)
