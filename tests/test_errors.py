"""Every user mistake and every fault of the machine ends in one message, exit 2, and no traceback.

Through the real CLI: a data file that is not UTF-8, a disk too small, read-only or full, a results file that is
not one, data that `on_overlong: drop` empties, a model folder that is not a vision-language model, a hub id that
cannot be fetched, an unfinished or damaged run; and the judge's API key never sent over plain http to another
machine. Each message names the place (file:line, path or id).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

TINY_RECIPE = "recipes/tiny-qwen2-vl.yaml"


def run_cli_together(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Independent CLI runs side by side (each is mostly start-up time)."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda args: run_cli(*args), commands))


def one_line(text: str) -> str:
    """The CLI's message with rich's line wrapping undone."""
    return " ".join(text.split())


def refused(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, one message holding every needle, no traceback; returns the message on one line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "This is a bug" not in result.stderr, result.stderr[-3000:]
    message = one_line(result.stderr)
    assert message.count("error:") == 1, result.stderr[-3000:]
    for needle in needles:
        assert one_line(needle) in message, (needle, result.stderr[-3000:])
    return message


def copy_instruct_lines(catalog: dict[str, Path], folder: Path, count: int) -> Path:
    """The first `count` lines of the catalog's instruct.jsonl, with their images, in `folder`."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = catalog["instruct"].read_text().splitlines()[:count]
    for line in lines:
        for image in json.loads(line)["images"]:
            shutil.copy(catalog["instruct"].parent / image, folder / image)
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_data_file_that_is_not_utf8_names_its_line(catalog: dict[str, Path], tmp_path: Path) -> None:
    data = copy_instruct_lines(catalog, tmp_path, 1)
    data.write_bytes(data.read_bytes() + b'{"images": [], "messages": "caf\xe9"}\n')
    result = run_cli("plan", TINY_RECIPE, "--data", str(data))
    refused(result, f"{data}:2", "not UTF-8")
    assert f"{data}:1" not in result.stderr  # the good line is not blamed


# --- a disk that is too small, read-only or full: real file systems in a private mount namespace -------------


def _in_own_mounts(folder: Path, mount_options: str, *args: str) -> subprocess.CompletedProcess:
    """Mount a fresh tmpfs on `folder` in a private mount namespace, then run `ecomtune ARGS` there ({dir} in an
    arg is the folder); `ls -A` of the folder afterwards ends stdout."""
    if shutil.which("unshare") is None:
        pytest.fail("these tests need util-linux's `unshare` to mount a small tmpfs; install util-linux")
    folder.mkdir()
    script = ('mount -t tmpfs -o "$1" tmpfs "$2" || exit 97; shift 2; "$@"; rc=$?; '
              'echo "--- left:"; ls -A "$DIR"; exit $rc')
    env = {**os.environ, "COLUMNS": "200", "ECOMTUNE_CACHE": os.environ["ECOMTUNE_CACHE"], "DIR": str(folder)}
    command = [sys.executable, "-m", "ecomtune", *(a.replace("{dir}", str(folder)) for a in args)]
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", mount_options, str(folder), *command],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode == 97 or "unshare:" in result.stderr:
        pytest.fail("cannot mount a private tmpfs with `unshare -rm` on this machine (user namespaces off?): "
                    f"{result.stderr.strip()[-500:]}")
    return result


def test_a_disk_too_small_is_refused_before_any_work(tmp_path: Path) -> None:
    result = _in_own_mounts(tmp_path / "small", "size=2m", "synth", "--out", "{dir}/cat", "--items", "4")
    refused(result, "Not enough free space", str(tmp_path / "small"), "MiB needed")
    left = result.stdout.split("--- left:")[-1].split()
    assert "cat" not in left, "the refused command created its output folder"
    assert ".cat.incoming" not in left, f"the refused command left its staging folder behind: {left}"


def test_a_read_only_disk_is_refused_naming_the_folder(tmp_path: Path) -> None:
    result = _in_own_mounts(tmp_path / "ro", "size=100m,ro", "synth", "--out", "{dir}/cat", "--items", "4")
    message = refused(result, str(tmp_path / "ro"))
    assert "read-only" in message.lower(), message


def test_a_full_disk_while_writing_is_a_user_facing_error() -> None:
    from ecomtune.errors import user_facing

    with pytest.raises(OSError) as raised:  # the error comes at write or at flush
        with open("/dev/full", "w") as handle:
            handle.write("x" * 10)
            handle.flush()
    error = user_facing(raised.value)
    assert error is not None, f"{raised.value!r} is treated as a bug"
    assert "disk is full" in error.render() and "--resume" in error.render()


# --- results, data and models that are not what the command needs -------------------------------------------


def test_bench_compare_names_the_file_that_is_not_a_results_file(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"model": {"spec": "m"}, "tasks": {"general": {"scores": {"accuracy": 0.5}, "n": 2,
                                                                              "examples_per_second": 1.0}}}))
    broken = tmp_path / "broken.json"
    broken.write_text('{"model": {"spec": "m"}, "tasks": ')
    no_tasks = tmp_path / "no-tasks.json"
    no_tasks.write_text(json.dumps({"model": {"spec": "m"}}))
    first, second = run_cli_together(("bench", "compare", str(broken), str(good)),
                                     ("bench", "compare", str(good), str(no_tasks)))
    refused(first, str(broken), "is not a results JSON")
    refused(second, str(no_tasks), "'tasks' is missing")


def test_sft_that_drops_every_sample_says_so(catalog: dict[str, Path], tmp_path: Path) -> None:
    data = copy_instruct_lines(catalog, tmp_path / "data", 3)
    result = run_cli("sft", "--recipe", TINY_RECIPE, "--data", str(data), "--output", str(tmp_path / "run"),
                     "--set", "sft.on_overlong=drop", "--set", "sft.max_length=16")
    refused(result, "every sample (3)", "max_length=16", f"{data}:1")
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_a_text_only_model_folder_is_not_a_vision_language_model(catalog: dict[str, Path], tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "text-only"
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    result = run_cli("bench", "--model", str(folder), "--tasks", "general", "--limit", "1",
                     "--data", str(catalog["bench"]))
    refused(result, str(folder), "'llama' model, not a vision-language model")


def test_a_hub_id_that_cannot_be_fetched_is_one_message_naming_it(catalog: dict[str, Path]) -> None:
    result = run_cli("bench", "--model", "someone/not-a-real-vlm", "--tasks", "general", "--limit", "1",
                     "--data", str(catalog["bench"]), env={"HF_HUB_OFFLINE": "1"})
    refused(result, "someone/not-a-real-vlm")


def test_an_unfinished_run_is_refused_with_how_to_finish_it(catalog: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "align-run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"stage": "align", "status": "running"}))
    bench, sft = run_cli_together(
        ("bench", "--model", str(run), "--tasks", "general", "--limit", "1", "--data", str(catalog["bench"])),
        ("sft", "--recipe", TINY_RECIPE, "--init-from", str(run), "--output", str(tmp_path / "sft")))
    refused(bench, f"--model {run}", "unfinished align run", f"`ecomtune align ... --output {run} --resume`")
    refused(sft, f"--init-from {run}", "unfinished align run", f"`ecomtune align ... --output {run} --resume`")
    assert not (tmp_path / "sft").exists()


def test_a_run_with_truncated_weights_is_damaged(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from ecomtune.errors import ConfigError
    from ecomtune.infer.load import run_of

    run = tmp_path / "align-run"
    run.mkdir()
    weights = run / "projector.safetensors"
    save_file({"weight": torch.ones(64, 64)}, str(weights))
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    (run / "manifest.json").write_text(json.dumps({"stage": "align", "status": "complete", "backbone": {"source": "x"},
                                                   "outputs": {"projector": "projector.safetensors"}}))
    sft = run_cli("sft", "--recipe", TINY_RECIPE, "--init-from", str(run), "--output", str(tmp_path / "sft"))
    refused(sft, f"--init-from {run}", "projector.safetensors is damaged")
    with pytest.raises(ConfigError) as raised:  # bench and predict read runs through the same reader
        run_of(str(run))
    assert f"--model {run}: projector.safetensors is damaged" in raised.value.render()


# --- the judge's API key -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://judge.example.com/v1", "http://localhost:8000", "http://127.0.0.1/v1",
                                 "http://[::1]:8000/v1"])
def test_judge_key_goes_over_https_or_to_this_machine(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ecomtune.bench.judges import EndpointJudge, make_judge

    monkeypatch.setenv("ECOMTUNE_JUDGE_API_KEY", "secret")
    judge = make_judge(url, False)  # constructing it connects to nothing
    assert isinstance(judge, EndpointJudge) and judge.url == url


def test_judge_key_is_never_sent_over_plain_http_to_another_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from ecomtune.bench.judges import EndpointJudge, make_judge
    from ecomtune.errors import ConfigError

    monkeypatch.setenv("ECOMTUNE_JUDGE_API_KEY", "secret")
    with pytest.raises(ConfigError) as raised:
        make_judge("http://example.com/v1", False)
    assert "http://example.com/v1" in raised.value.render() and "--judge-plain-http" in raised.value.render()
    assert "secret" not in raised.value.render()
    assert isinstance(make_judge("http://example.com/v1", allow_plain_http_key=True), EndpointJudge)
    monkeypatch.delenv("ECOMTUNE_JUDGE_API_KEY")
    assert isinstance(make_judge("http://example.com/v1", False), EndpointJudge)  # no key, nothing to expose
