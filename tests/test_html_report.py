"""`ecomtune bench report`: the HTML page holds what the results hold, read back with a real HTML parser."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import pytest
from PIL import Image

from ecomtune.bench.runner import run_bench
from ecomtune.tasks.registry import TASKS
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


class Page(HTMLParser):
    """Score rows (task -> cell texts) and example cards (id, pass/fail, images, text blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.cards: list[dict] = []
        self._row: str | None = None
        self._cell: list[str] | None = None
        self._block: str | None = None

    def handle_starttag(self, tag, attrs):
        found = dict(attrs)
        if tag == "tr" and "data-task" in found:
            self._row = found["data-task"]
            self.rows[self._row] = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "div" and "card" in found.get("class", ""):
            self.cards.append({"id": found["data-id"], "task": found["data-task"],
                               "passed": "pass" in found["class"].split(), "images": [], "text": {}})
        elif tag == "img" and self.cards:
            self.cards[-1]["images"].append(found["src"])
        elif tag == "pre" and self.cards:
            self._block = found["class"]
            self.cards[-1]["text"][self._block] = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[self._row].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "pre":
            self._block = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._block is not None:
            self.cards[-1]["text"][self._block] += data


def test_report_holds_the_scores_and_every_example(catalog, tmp_path):
    before = tmp_path / "before.json"
    run_bench("tiny-qwen2-vl", "deep-fashion,item-intelligence,aspect-prediction", catalog["bench"], out=before,
              limit=3, batch_size=3)
    results = json.loads(before.read_text())
    after = tmp_path / "after.json"
    after.write_text(json.dumps(results))

    out = tmp_path / "report.html"
    done = run_cli("bench", "report", str(before), str(after), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    page = Page()
    page.feed(out.read_text(encoding="utf-8"))

    for task, entry in results["tasks"].items():
        value = f"{entry['scores'][TASKS[task].headline]:.3f}"
        assert page.rows[task] == [task, TASKS[task].headline, value, value]
        cards = [c for c in page.cards if c["task"] == task]
        assert sorted(c["id"] for c in cards) == sorted(str(e["id"]) for e in entry["examples"])
        passed = [c["passed"] for c in cards]
        assert passed == sorted(passed), "failures come first"
        by_id = {str(e["id"]): e for e in entry["examples"]}
        for card, example in ((c, by_id[c["id"]]) for c in cards):
            assert card["text"]["prediction"] == example["prediction"]
            assert card["text"]["prompt"] == example["prompt"]
            assert json.loads(card["text"]["truth"]) == example["reference"] and example["reference"]
            assert len(card["images"]) == len(example["image_paths"]) == example["images"]
            for src in card["images"]:
                assert src.startswith("data:image/jpeg;base64,")
                Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    fashion = {str(e["id"]): e for e in results["tasks"]["deep-fashion"]["examples"]}
    for card in (c for c in page.cards if c["task"] == "deep-fashion"):
        assert card["passed"] == fashion[card["id"]]["correct"]

    again = run_cli("bench", "report", str(after), "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    inside = run_cli("bench", "report", str(after), "--out", str(after))
    assert inside.returncode == 2 and "Traceback" not in inside.stderr


def test_thumbnails_show_the_image_as_the_model_saw_it(tmp_path):
    """Through the one image loader: transparency on white (not black), EXIF orientation applied, and an
    unreadable file gives no thumbnail rather than an error."""
    from ecomtune.bench.html_report import _thumbnail

    Image.new("RGBA", (40, 20), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displayed 20 wide, 40 high
    Image.new("RGB", (40, 20), (10, 200, 10)).save(tmp_path / "phone.jpg", exif=exif)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0not a jpeg")

    def decoded(path):
        uri = _thumbnail(str(path))
        return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")

    assert min(decoded(tmp_path / "clear.png").getpixel((5, 5))) > 240
    assert decoded(tmp_path / "phone.jpg").size == (20, 40)
    assert _thumbnail(str(tmp_path / "broken.jpg")) is None
