"""The benchmark end to end on tiny real models: base, sft adapter run, CLI, compare, judges, bad input."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from ecomtune.bench.judges import EndpointJudge
from ecomtune.bench.runner import run_bench
from ecomtune.config.recipe_files import load_recipe
from ecomtune.errors import ConfigError, DataError
from ecomtune.tasks.judging import judge_item
from ecomtune.tasks.registry import TASKS
from ecomtune.train.stages import run_sft
from tests.conftest import quick_overrides, run_cli

pytestmark = pytest.mark.slow


def test_bench_all_tasks_on_the_base_model(catalog, tmp_path):
    out = tmp_path / "base.json"
    results = run_bench("tiny-qwen2-vl", "all", catalog["bench"], out=out, limit=2, batch_size=2)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert set(results["tasks"]) == set(TASKS)
    for name, entry in results["tasks"].items():
        assert entry["n"] == 2 and len(entry["examples"]) == 2, name
        assert all("prediction" in e and "prompt" in e for e in entry["examples"])
        assert entry["seconds"] > 0
    assert results["model"]["kind"] == "base" and results["model"]["family"] == "qwen2-vl"
    assert len(results["data"]["fingerprint"]) == 64 and results["versions"]["transformers"]
    fashion = results["tasks"]["deep-fashion"]["scores"]
    assert 0.0 <= fashion["accuracy"] <= 1.0 and "majority_baseline" in next(iter(fashion["by_attribute"].values()))


def test_bench_an_sft_run_loads_the_adapter_on_its_4bit_base(catalog, tmp_path):
    recipe = load_recipe(None, [f"sft.data={catalog['instruct']}", *quick_overrides("sft", steps=2),
                                "sft.max_length=1024"])
    run = run_sft(recipe, tmp_path / "sft").output
    results = run_bench(str(run), "deep-fashion,general", catalog["bench"], limit=3)
    assert results["model"]["kind"] == "adapter" and results["model"]["load_in_4bit"] is True
    assert len(results["model"]["fingerprint"]) == 64
    assert set(results["tasks"]) == {"deep-fashion", "general"}


def test_cli_bench_and_compare(catalog, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        result = run_cli("bench", "--model", "tiny-qwen2-vl", "--tasks", "deep-fashion", "--limit", "3",
                         "--data", str(catalog["bench"]), "--out", str(out))
        assert result.returncode == 0, result.stderr[-2000:]
    assert "deep-fashion" in result.stdout and "majority" in result.stdout
    compared = run_cli("bench", "compare", str(a), str(b))
    assert compared.returncode == 0 and "deep-fashion/accuracy" in compared.stdout and "+0.000" in compared.stdout


def test_unknown_task_and_missing_data_are_clear_errors(catalog, tmp_path):
    with pytest.raises(ConfigError, match="Unknown task"):
        run_bench("tiny-qwen2-vl", "deep-fashon", catalog["bench"])
    with pytest.raises(DataError, match="does not exist"):
        run_bench("tiny-qwen2-vl", "general", tmp_path)
    (tmp_path / "general.jsonl").write_text('{"id": "x", "images": ["nope.png"]}\n{oops\n')
    with pytest.raises(DataError) as caught:
        run_bench("tiny-qwen2-vl", "general", tmp_path)
    text = caught.value.render()
    assert "general.jsonl:1" in text and "file not found" in text and "general.jsonl:2" in text


class _JudgeServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint on loopback that calls every claim about the brand correct."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        claim = body["messages"][0]["content"]
        verdict = "Correct." if "brand =" in claim else "unverifiable"
        payload = json.dumps({"choices": [{"message": {"content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_endpoint_judge_against_a_local_openai_compatible_server():
    server = HTTPServer(("127.0.0.1", 0), _JudgeServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        judge = EndpointJudge(f"http://127.0.0.1:{server.server_port}", timeout=5)
        counts = judge_item(judge, {"identifiers": {"brand": "ACME", "barcode": "1"}},
                            {"identifiers": {"brand": "ACME"}})
    finally:
        server.shutdown()
        server.server_close()
    assert counts == {"correct": 1, "incorrect": 0, "unverifiable": 1, "reference": 1}


def test_local_model_judge_runs_a_real_causal_lm(tmp_path):
    """A tiny random Qwen2 text model as the judge: its reply goes through the real text-generation
    pipeline and is mapped onto one of the three verdicts."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from ecomtune.backbones.registry import resolve_backbone
    from ecomtune.bench.judges import make_judge
    from ecomtune.tasks.judging import VERDICTS

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("tiny-qwen2-vl").source)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "judge")
    tokenizer.save_pretrained(tmp_path / "judge")
    judge = make_judge(str(tmp_path / "judge"))
    assert judge.name == "local-model"
    assert judge.judge("origin.country", "China", {"origin.country": "Italy"}) in VERDICTS
