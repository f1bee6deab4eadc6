"""`ecomtune curate`: cleaning and verdict parsing as pure functions, listings with their file:line, and the whole
pipeline on the synthetic catalog's seller listings with a tiny model: the truth accounting follows the verdicts
exactly, finished listings are skipped, a torn line is dropped, and outputs stay apart from the inputs."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from ecomtune.curate import steps
from ecomtune.curate.clean import aspect_name, clean_aspects, vocabulary
from ecomtune.curate.generation import LocalGenerator
from ecomtune.curate.listings import read_listings
from ecomtune.curate.runner import CurateOptions, run_curate
from ecomtune.curate.truth import read_truth
from ecomtune.curate.verify import VERDICTS, caption_verdicts, parse_verdict, vqa_requests, vqa_verdicts
from ecomtune.data.canonical_file import load_canonical_file
from ecomtune.errors import ConfigError, DataError
from tests.conftest import run_cli

VQA = CurateOptions(verifier="tiny-qwen2-vl", verify="vqa", batch_size=8)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_clean_folds_names_and_values_and_logs_every_drop():
    cleaned = clean_aspects({"COLOR": " Red ", "Main Colour": "blue", "Pattern": "Stripes", "Style": "N/A",
                             "Theme": "", "Brand": "NOVA", "Size Type": "XL", "Features": "See description",
                             "Notes": "x" * 100})
    assert cleaned.aspects == {"colour": "red", "pattern": "striped", "brand": "NOVA", "size": "XL"}
    actions = {entry["name"]: entry["action"] for entry in cleaned.log}
    assert actions == {"COLOR": "kept", "Main Colour": "duplicate", "Pattern": "kept", "Style": "boilerplate",
                       "Theme": "empty", "Brand": "kept", "Size Type": "kept", "Features": "boilerplate",
                       "Notes": "too_long"}
    assert aspect_name("Sleeve_Type") == "sleeve length"
    assert vocabulary([{"colour": "red"}, {"colour": "blue"}, {"colour": "red"}, {"size": "M"}]) == {
        "colour": ["red", "blue"]}, "most used first; an aspect with one value has no options"


def test_verdicts_are_read_tolerantly_and_the_unreadable_counted():
    assert parse_verdict("Not_visible.") == "not_visible" and parse_verdict("blah") is None
    assert parse_verdict("not supported by the caption") == "not_visible" != parse_verdict("Supported.")
    damaged = '```json\n{"Color": {"verdict": "Supported", "evidence": "a red shirt"}, "pattern": "contradicts'
    found = caption_verdicts({"colour": "red", "pattern": "dotted", "size": "M"}, damaged)
    assert [(v["aspect"], v["verdict"]) for v in found] == [("colour", "supported"), ("pattern", "contradicted"),
                                                           ("size", "unparsed")]
    assert found[0]["evidence"] == "a red shirt"
    assert caption_verdicts({"colour": "red"}, "")[0]["verdict"] == "unparsed"
    aspects, options = {"colour": "red", "size": "M"}, {"colour": ["red", "blue"]}
    assert len(vqa_requests("/x.png", aspects, options)) == 3, "choice + yes/no for colour, yes/no for size"
    for answers, expected in ((["red", "yes", "no"], ["supported", "contradicted"]),
                              (["Blue.", "no", "maybe"], ["contradicted", "unparsed"]),
                              (["blue", "yes", "Yes"], ["not_visible", "supported"]),  # the two answers disagree
                              (["??", "yes", "yes"], ["not_visible", "supported"])):
        assert [v["verdict"] for v in vqa_verdicts(aspects, options, answers)] == expected, answers


def test_listings_jsonl_and_csv_with_every_bad_row_located(tmp_path, catalog):
    image = str(catalog["listings"].parent / "images" / "item00000_0.png")
    good = {"id": "a", "title": "t", "category": "c", "aspects": {"Colour": "red"}, "images": [image]}
    path = tmp_path / "listings.jsonl"
    path.write_text("\n".join([json.dumps(good), "{not json", json.dumps({**good, "images": ["nope.png"]}),
                               json.dumps({**good, "id": "b", "aspects": ["red"]}), json.dumps(good)]) + "\n")
    with pytest.raises(DataError) as caught:
        read_listings(path)
    text = caught.value.render()
    for line, what in ((2, "malformed JSON"), (3, "file not found"), (4, "must be a mapping"), (5, "also the id")):
        assert f"{path}:{line}: " in text and what in text, (line, text)
    kept = read_listings(path, skip_bad=True)
    assert [x.id for x in kept.listings] == ["a"] and len(kept.bad) == 4
    csv = tmp_path / "listings.csv"
    csv.write_text(f'id,title,aspects,images\nx,"two\nlines","Colour: Red; Size: N/A",{image}|{image}\n'
                   f'y,t,"{{""Colour"": ""blue""}}",missing.png\n')
    with pytest.raises(DataError, match=rf"{csv}:4: image 'missing.png'"):
        read_listings(csv)
    row = read_listings(csv, skip_bad=True).listings[0]
    assert (row.title, row.aspects, len(row.images)) == ("two\nlines", {"Colour": "Red", "Size": "N/A"}, 2)


def recount(truth: dict, clean: dict, verdicts: dict) -> dict[str, list[int]]:
    """The truth table recomputed here from the step files: aspect -> [wrong, wrong kept, right, right kept]."""
    table: dict[str, list[int]] = {}
    for listing_id, entries in truth.items():
        if listing_id not in verdicts:
            continue
        for entry in entries:
            log = next(e for e in clean[listing_id]["log"] if e["name"] == entry["name"])
            kept = log["action"] == "kept" and any(
                v["aspect"] == log["aspect"] and v["verdict"] == "supported" for v in verdicts[listing_id]["verdicts"])
            row = table.setdefault(entry["aspect"], [0, 0, 0, 0])
            if entry["status"] in ("wrong", "right"):
                at = 0 if entry["status"] == "wrong" else 2
                row[at] += 1
                row[at + 1] += kept
    return table


def test_curate_vqa_on_seller_listings_scores_what_its_verdicts_imply(catalog, tmp_path):
    out = tmp_path / "curated"
    report = run_curate(catalog["listings"], out, VQA)
    truth = read_truth(catalog["listings_truth"])
    clean = {x["id"]: x for x in lines(out / "steps" / "clean.jsonl")}
    verdicts = {x["id"]: x for x in lines(out / "steps" / "verdicts.jsonl")}
    assert set(verdicts) == set(truth) and report["listings"] == len(truth)
    assert report["settings"]["truth"] == str(catalog["listings_truth"]), "found beside the listings"
    for aspect, (wrong, wrong_kept, right, right_kept) in recount(truth, clean, verdicts).items():
        row = report["truth"][aspect]
        assert (row["wrong"], row["wrong_kept"], row["right"], row["right_kept"]) == (wrong, wrong_kept, right,
                                                                                     right_kept), aspect
        assert row["wrong_removed_share"] == ((wrong - wrong_kept) / wrong if wrong else None)
        assert row["right_kept_share"] == (right_kept / right if right else None)
    assert report["truth"]["colour"]["wrong"] > 0, "the listings have wrong colours to remove"
    assert all(report["truth"][a]["boilerplate_kept"] == 0 for a in report["truth"]), "boilerplate never kept"
    every = [v for line in verdicts.values() for v in line["verdicts"]]
    assert {v["verdict"] for v in every} <= set(VERDICTS)
    for verdict in VERDICTS:
        assert sum(row[verdict] for row in report["aspects"].values()) == sum(v["verdict"] == verdict for v in every)
    supported = [v for line in verdicts.values() for v in line["verdicts"] if v["verdict"] == "supported"]
    if supported:  # an untrained model may support nothing; the endpoint test builds instructions for sure
        assert len(load_canonical_file(out / "instruct.jsonl")) == report["instructions"]
    else:
        assert report["instructions"] == 0 and (out / "instruct.jsonl").read_text() == ""
    assert json.loads((out / "report.json").read_text())["truth"] == report["truth"]


class Interrupt(Exception):
    pass


def test_curate_resumes_skips_finished_listings_and_drops_a_torn_line(catalog, tmp_path, monkeypatch):
    out = tmp_path / "curated"
    real, answered = LocalGenerator.batches, []

    def killed_after_four_batches(self, requests, max_new_tokens, batch_size):
        for batch in real(self, requests, max_new_tokens, batch_size):
            if len(answered) == 4:
                raise Interrupt
            answered.append(len(batch))
            yield batch

    monkeypatch.setattr(steps, "CHUNK_BATCHES", 0.25)  # one listing per appended chunk (batch size 4)
    monkeypatch.setattr(LocalGenerator, "batches", killed_after_four_batches)
    with pytest.raises(Interrupt):
        run_curate(catalog["listings"], out, CurateOptions(**{**VQA.__dict__, "limit": 12, "batch_size": 4}))
    monkeypatch.setattr(LocalGenerator, "batches", real)
    finished = lines(out / "steps" / "verdicts.jsonl")
    cached = lines(out / "cache.jsonl")
    assert finished and len(cached) == sum(answered), "every answered batch reached the cache before the kill"
    assert not (out / "report.json").exists()
    with (out / "steps" / "verdicts.jsonl").open("a") as handle:  # killed in the middle of a line
        handle.write('{"id": "item00011", "key": "0123", "verd')

    report = run_curate(catalog["listings"], out, CurateOptions(**{**VQA.__dict__, "limit": 12, "batch_size": 4}))
    verify = report["throughput"]["verify"]
    assert (verify["skipped"], verify["done"]) == (len(finished), 12 - len(finished))
    assert verify["cached"] == len(cached) - sum(len(x["raw"]) for x in finished), "the killed chunk's answers reused"
    done = lines(out / "steps" / "verdicts.jsonl")  # every line parses: the torn one is gone
    assert [x["id"] for x in done][:len(finished)] == [x["id"] for x in finished] and len(done) == 12
    again = run_curate(catalog["listings"], out, CurateOptions(**{**VQA.__dict__, "limit": 12}))
    assert again["throughput"]["verify"]["done"] == 0 and again["throughput"]["clean"]["done"] == 0
    assert again["truth"] == report["truth"]


def test_outputs_stay_apart_from_inputs_and_other_curations(catalog, tmp_path):
    with pytest.raises(ConfigError, match="inside the listings folder"):
        run_curate(catalog["listings"], catalog["listings"].parent / "curated", VQA)
    with pytest.raises(ConfigError, match="image folder"):
        run_curate(catalog["listings"], catalog["listings"].parent / "images" / "x", VQA)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a curation"):
        run_curate(catalog["listings"], foreign, VQA)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="no --captioner"):
        run_curate(catalog["listings"], tmp_path / "o", CurateOptions(verifier="tiny-qwen2-vl"))


class FakeServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint: captions say "a red shirt"; verdict questions get supported colours."""

    seen: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeServer.seen.append({"auth": self.headers.get("Authorization"), "body": body})
        text = body["messages"][0]["content"][-1]["text"]
        reply = ('{"colour": {"verdict": "supported", "evidence": "red"}}' if "seller claims" in text
                 else "A red shirt on a white background.")
        data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_caption_mode_through_an_endpoint_with_the_key_guarded(catalog, tmp_path, monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), FakeServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("ECOMTUNE_API_KEY", "sekrit")
    try:
        report = run_curate(catalog["listings"], tmp_path / "c", CurateOptions(captioner=url, limit=6))
    finally:
        server.shutdown()
    assert FakeServer.seen and all(s["auth"] == "Bearer sekrit" for s in FakeServer.seen), "sent to this machine"
    first = FakeServer.seen[0]["body"]["messages"][0]["content"]
    assert first[0]["image_url"]["url"].startswith("data:image/png;base64,")
    colour = report["aspects"]["colour"]
    assert colour["supported"] == 6 and sum(row["unparsed"] for row in report["aspects"].values()) > 0
    colour, pattern = report["truth"]["colour"], report["truth"]["pattern"]
    assert colour["wrong_removed_share"] in (0.0, None) and colour["right_kept_share"] == 1.0, "all supported"
    assert pattern["right_kept_share"] in (0.0, None), "an aspect the verifier's answer left out is not kept"
    assert len(load_canonical_file(tmp_path / "c" / "captions.jsonl")) == 6
    assert len(load_canonical_file(tmp_path / "c" / "instruct.jsonl")) == report["instructions"] > 0
    with pytest.raises(ConfigError, match="unencrypted"):
        run_curate(catalog["listings"], tmp_path / "d", CurateOptions(captioner="http://example.com:9/v1"))


def test_curate_command_prints_the_tables_and_refuses_bad_input_in_one_message(catalog, tmp_path):
    result = run_cli("curate", str(catalog["listings"]), "--out", str(tmp_path / "cli"), "--verify", "vqa",
                     "--verifier", "tiny-qwen2-vl", "--limit", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ecomtune curate: 3 listings" in result.stdout and "against the truth" in result.stdout
    assert "throughput" in result.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "images": ["gone.png"]}\n')
    refused = run_cli("curate", str(bad), "--out", str(tmp_path / "x"), "--verify", "vqa", "--verifier",
                      "tiny-qwen2-vl")
    assert refused.returncode == 2 and f"{bad}:1" in refused.stderr and "Traceback" not in refused.stderr


def test_a_text_only_llm_verifies_captions_and_is_refused_where_images_are_shown(catalog, tmp_path):
    """The paper's verifier is a text LLM reading captions: any `...ForCausalLM` folder works in caption mode."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from ecomtune.backbones.registry import resolve_backbone

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("tiny-qwen2-vl").source)
    torch.manual_seed(0)
    llm = tmp_path / "llm"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(llm)
    tokenizer.save_pretrained(llm)
    options = CurateOptions(captioner="tiny-qwen2-vl", verifier=str(llm), limit=3, caption_tokens=8, verify_tokens=8)
    report = run_curate(catalog["listings"], tmp_path / "c", options)
    assert report["throughput"]["verify"]["generated"] == 3 and report["settings"]["verifier"] == str(llm)
    assert sum(sum(row[v] for v in VERDICTS) for row in report["aspects"].values()) == sum(
        row["clean_kept"] for row in report["aspects"].values()), "every cleaned aspect has a verdict"
    with pytest.raises(ConfigError, match="text-only model"):
        run_curate(catalog["listings"], tmp_path / "d", CurateOptions(verifier=str(llm), verify="vqa"))


HOLD_LOCK = ("from ecomtune.runs.outputs import OutputLock; import time, sys; "
             "lock = OutputLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")


def test_two_curations_at_once_the_second_is_refused_and_leaves_nothing(catalog, tmp_path):
    """The same --out, or the same shared --cache: whichever is held, the second command is refused, and a
    refusal over the cache leaves no trace in its own --out."""
    import subprocess
    import sys

    from tests.conftest import REPO

    for held, out, cache, option in ((tmp_path / "same", tmp_path / "same", None, "output folder"),
                                     (tmp_path / "cache.jsonl", tmp_path / "other", tmp_path / "cache.jsonl",
                                      "--cache file")):
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(held)], cwd=REPO, stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            with pytest.raises(ConfigError) as caught:
                run_curate(catalog["listings"], out, CurateOptions(**{**VQA.__dict__, "limit": 2, "cache": cache}))
            text = caught.value.render()
            assert f"Another ecomtune command is writing to {held}" in text and f"choose another {option}" in text
            assert not out.exists() or not any(out.iterdir()), f"a refused curation wrote into {out}"
        finally:
            holder.kill()
            holder.wait(timeout=30)


@pytest.mark.slow
def test_curate_killed_with_sigkill_resumes_to_what_one_run_gives(catalog, tmp_path):
    """A real `kill -9` in the middle of verification (answers cached batch by batch, the listings' chunk not yet
    appended); the rerun reuses what reached the cache and ends with the verdicts of a run straight through."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    options = CurateOptions(**{**VQA.__dict__, "limit": 4, "batch_size": 4})
    straight = run_curate(catalog["listings"], tmp_path / "straight", options)
    args = ["curate", str(catalog["listings"]), "--verify", "vqa", "--verifier", "tiny-qwen2-vl", "--limit", "4",
            "--batch-size", "4"]
    out = tmp_path / "killed"
    victim = subprocess.Popen([sys.executable, "-m", "ecomtune", *args, "--out", str(out)], cwd=REPO,
                              env={**os.environ, "COLUMNS": "200"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    cache = out / "cache.jsonl"
    deadline = time.monotonic() + 240
    while victim.poll() is None and time.monotonic() < deadline:
        if cache.is_file() and cache.read_bytes().count(b"\n") >= 8:  # two batches answered
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert victim.wait(timeout=60) == -signal.SIGKILL, "killed in the middle, not after the end"
    assert not (out / "report.json").exists()
    cached_before = len(cache.read_bytes().splitlines())
    resumed = run_cli(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["throughput"]["verify"]["cached"] >= min(8, cached_before - 1)  # a torn last line is asked again
    verdicts = {x["id"]: x for x in lines(out / "steps" / "verdicts.jsonl")}
    assert verdicts == {x["id"]: x for x in lines(tmp_path / "straight" / "steps" / "verdicts.jsonl")}
    assert report["aspects"] == straight["aspects"] and report["truth"] == straight["truth"]
