"""The libraries' log (`train.log`) on a full disk: it stops quietly at its first failed write, and the command's
final message says so, instead of a "--- Logging error ---" traceback per record on the terminal; and what
quieted libraries keep off the terminal."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, TrainerCallback

from ecomtune.config.recipe_files import load_recipe
from ecomtune.errors import user_facing
from ecomtune.library_output import capture_to
from tests.conftest import quick_overrides

FULL = Path("/dev/full")  # every write fails with ENOSPC, as on a full disk


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux)")
def test_a_log_on_a_full_device_fails_quietly_once_and_the_final_message_says_so(capfd):
    with pytest.raises(OSError) as caught, capture_to(FULL):
        for n in range(16):
            logging.getLogger("transformers").warning("Saving model checkpoint %d", n)
        raise OSError(errno.ENOSPC, "No space left on device", "runs/sft/checkpoint-2/adapter_model.safetensors")
    assert "Logging error" not in capfd.readouterr().err
    message = user_facing(caught.value).render()
    assert message.startswith("Cannot go on: the disk is full (runs/sft/checkpoint-2/adapter_model.safetensors)")
    assert message.count("note: the libraries' log /dev/full stopped being written") == 1
    assert "No space left on device" in message


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux)")
def test_a_block_that_ends_well_says_once_that_its_log_stopped(capfd):
    with capture_to(FULL):
        for n in range(5):
            logging.getLogger("peft").warning("record %d", n)
    err = capfd.readouterr().err
    assert "Logging error" not in err and err.count("note: the libraries' log /dev/full stopped") == 1


class FillTheDisk(TrainerCallback):
    """Another process filling the disk in the middle of training: a file grows until the kernel says ENOSPC."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            with open(self.folder / "filler", "wb") as handle:
                try:
                    while True:
                        handle.write(b"\0" * (1 << 20))
                        handle.flush()
                except OSError:
                    pass
            with open(self.folder / "filler-tail", "wb", buffering=0) as handle:  # the last few KiB
                try:
                    while True:
                        handle.write(b"\0" * 512)
                except OSError:
                    pass
            # the libraries go on logging (transformers logs whole configs at INFO): each record is larger than
            # the slack in the last page of train.log, so it needs a page the disk no longer has
            config = AutoConfig.from_pretrained(kwargs["model"].config._name_or_path)
            for _ in range(16):
                logging.getLogger("transformers.configuration_utils").info("Model config %s", config)


@pytest.mark.slow
def test_training_onto_a_disk_that_fills_up_ends_in_one_message(catalog, tmp_path, capfd):
    """A real, tiny file system (tmpfs, mounted when the tests run as root) fills up after step 1."""
    from ecomtune.train.stages import run_sft

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        recipe = load_recipe(None, [f"sft.data={catalog['instruct']}", *quick_overrides("sft", steps=3),
                                    "sft.lora.r=2", "sft.train.logging_steps=50", "sft.eval_fraction=0.2",
                                    "sft.train.eval_steps=2"])
        with pytest.raises(OSError) as caught:
            run_sft(recipe, disk / "sft", callbacks=[FillTheDisk(disk)])
        err = capfd.readouterr().err
        assert "Logging error" not in err and "Traceback" not in err
        message = user_facing(caught.value).render()
        assert message.startswith("Cannot go on: the disk is full"), message
        assert "note: the libraries' log" in message and "train.log" in message, message
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    assert not os.path.ismount(disk)




def test_deepspeed_s_cpu_warning_stays_off_a_quiet_terminal():
    """DeepSpeed, imported on a machine without a GPU, prints "Setting accelerator to CPU ..." through a stdout
    handler of its own; quieted libraries keep its warnings off the terminal, never its errors."""
    script = ("import os\nos.environ.pop('ECOMTUNE_VERBOSE', None)\n"
              "from ecomtune.library_output import quiet_libraries\nquiet_libraries()\n"
              "from deepspeed.accelerator import get_accelerator\nfrom deepspeed.utils import logger\n"
              "print(type(get_accelerator()).__name__)\n"
              "logger.warning('a deepspeed warning')\nlogger.error('a deepspeed error')")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stderr
    shown = run.stdout + run.stderr
    assert "CPU_Accelerator" in run.stdout
    assert "Setting accelerator to CPU" not in shown and "a deepspeed warning" not in shown
    assert "a deepspeed error" in shown
