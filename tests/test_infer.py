"""The one image-turn builder and the one generation's promise to leave the tokenizer as it found it."""

from __future__ import annotations

import pytest

from ecomtune.infer.client import image_part
from ecomtune.infer.generate import padded_left
from ecomtune.tasks.image_turn import image_turn


def test_an_image_turn_holds_one_placeholder_per_image_then_the_text(tmp_path):
    assert image_turn(2, "What colour?") == {"role": "user", "content": [
        {"type": "image"}, {"type": "image"}, {"type": "text", "text": "What colour?"}]}
    assert image_turn(["a.png"]) == {"role": "user", "content": [{"type": "image"}]}
    picture = tmp_path / "a.png"
    picture.write_bytes(b"\x89PNG")
    served = image_turn([picture], "Hi", image_part)["content"]
    assert served[0]["type"] == "image_url" and served[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert served[1] == {"type": "text", "text": "Hi"}


class Tokenizer:
    padding_side = "right"


def test_generation_pads_left_and_puts_the_side_back_even_when_it_fails():
    tokenizer = Tokenizer()
    with padded_left(tokenizer):
        assert tokenizer.padding_side == "left"
    assert tokenizer.padding_side == "right"
    with pytest.raises(RuntimeError), padded_left(tokenizer):
        raise RuntimeError("out of memory")
    assert tokenizer.padding_side == "right"
