"""The models curation asks: a local VLM (alias, hub id, folder or run, loaded the one way ecomtune loads a model
for inference) or an OpenAI-compatible endpoint URL, behind one interface, with a cache of every answer.

The cache is keyed by (model fingerprint, prompt, image contents, generation settings), so a rerun, a resumed
run or another curation sharing `--cache` never asks the same question twice, and a changed image or model is
asked again. It is an append-only JSONL file (`ecomtune.runs.appendlog`): a kill loses at most one batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ecomtune.errors import ConfigError
from ecomtune.runs.appendlog import AppendOnlyFile, append_synced, complete_records
from ecomtune.runs.endpoint import ChatEndpoint, is_endpoint

Progress = Callable[[int], None]  # called with the number of answers just produced


@dataclass(frozen=True)
class Request:
    """One question: a prompt about zero or more images (absolute paths)."""

    prompt: str
    images: tuple[str, ...] = ()


class Generator(Protocol):
    spec: str
    fingerprint: str

    def batches(self, requests: list[Request], max_new_tokens: int, batch_size: int) -> Iterator[list[str]]: ...


@dataclass
class LocalGenerator:
    """A model ecomtune loads (`runs.loading.load_for_inference`), answering greedily in left-padded batches
    (`bench.runner.generate_batches`). Loaded on first use, so a run whose answers are all cached loads nothing."""

    spec: str
    load_in_4bit: bool | None = None
    fingerprint: str = ""
    _loaded: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from ecomtune.runs.loading import model_fingerprint

        self.fingerprint = self.fingerprint or model_fingerprint(self.spec)

    def batches(self, requests: list[Request], max_new_tokens: int, batch_size: int) -> Iterator[list[str]]:
        from ecomtune.bench.runner import generate_batches
        from ecomtune.runs.loading import load_for_inference

        if self._loaded is None:
            self._loaded = load_for_inference(self.spec, self.load_in_4bit)
        yield from generate_batches(self._loaded, [r.prompt for r in requests], [list(r.images) for r in requests],
                                    max_new_tokens, batch_size)


@dataclass
class EndpointGenerator:
    """A served model (vLLM, TGI, a hosted API) behind an OpenAI-compatible URL; one request per question."""

    spec: str
    endpoint: ChatEndpoint
    fingerprint: str = ""

    def __post_init__(self) -> None:
        self.fingerprint = self.fingerprint or f"{self.endpoint.url}#{self.endpoint.model}"

    def batches(self, requests: list[Request], max_new_tokens: int, batch_size: int) -> Iterator[list[str]]:
        for start in range(0, len(requests), batch_size):
            yield [self.endpoint.complete(r.prompt, list(r.images), max_new_tokens)
                   for r in requests[start:start + batch_size]]


def _causal_lm_architectures(spec: str) -> list[str] | None:
    """The architectures of a text-only model (every one a `...ForCausalLM`), None for anything else. Read from
    a folder's config.json, or a hub model's config when it can be fetched; a VLM, an alias or an unreachable hub
    id is left to ecomtune's loader, which explains what is wrong."""
    config = Path(spec) / "config.json"
    try:
        if config.is_file():
            architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        elif spec.count("/") == 1 and not Path(spec).exists():
            from transformers import AutoConfig

            architectures = getattr(AutoConfig.from_pretrained(spec), "architectures", None) or []
        else:
            return None
    except Exception:  # any failure means "not known to be a text LLM": the loader then says what is wrong
        return None
    return architectures if architectures and all(a.endswith("ForCausalLM") for a in architectures) else None


@dataclass
class TextLLMGenerator:
    """A text-only LLM (the paper's verifier reads captions with one): `AutoModelForCausalLM`, the tokenizer's
    chat template when it has one, greedy left-padded batches. It cannot see images."""

    spec: str
    fingerprint: str = ""
    _loaded: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.fingerprint:
            config = Path(self.spec) / "config.json"
            weights = sorted(Path(self.spec).glob("*.safetensors")) if config.is_file() else []
            parts = [config.read_text(encoding="utf-8") if config.is_file() else self.spec]
            parts += [f"{w.name}:{w.stat().st_size}" for w in weights]
            self.fingerprint = "text-llm:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.spec)
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            import torch

            from ecomtune.backbones.model_loading import pick_compute_dtype

            kwargs: dict[str, Any] = {"dtype": pick_compute_dtype("auto")}
            if torch.cuda.is_available():
                kwargs["device_map"] = {"": 0}
            self._loaded = (AutoModelForCausalLM.from_pretrained(self.spec, **kwargs).eval(), tokenizer)
        return self._loaded

    def _text(self, tokenizer: Any, prompt: str) -> str:
        if not tokenizer.chat_template:
            return prompt
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)

    def batches(self, requests: list[Request], max_new_tokens: int, batch_size: int) -> Iterator[list[str]]:
        import torch

        model, tokenizer = self._load()
        for start in range(0, len(requests), batch_size):
            texts = [self._text(tokenizer, r.prompt) for r in requests[start:start + batch_size]]
            inputs = tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            yield [a.strip() for a in tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                                             skip_special_tokens=True)]


def make_generator(spec: str, option: str, load_in_4bit: bool | None = None, endpoint_model: str = "default",
                   allow_plain_http: bool = False, needs_images: bool = True) -> Generator:
    """The generator a `--captioner` / `--verifier` argument names: an http(s) URL, a text-only LLM (folder or hub
    id; only where no image is shown, `needs_images=False`), or anything ecomtune loads as a VLM. An endpoint's
    API key (`ECOMTUNE_API_KEY`) is checked for safe transport before any work starts."""
    if is_endpoint(spec):
        endpoint = ChatEndpoint(spec, endpoint_model)
        endpoint.check_key_safety(option, allow_plain_http)
        return EndpointGenerator(spec, endpoint)
    architectures = _causal_lm_architectures(spec)
    if architectures is not None:
        if needs_images:
            raise ConfigError(f"{option} {spec} is a text-only model ({', '.join(architectures)}): it cannot look at "
                              "images", fix="use a vision-language model here; a text LLM can verify captions "
                              "(--verify caption --verifier LLM)")
        return TextLLMGenerator(spec)
    return LocalGenerator(spec, load_in_4bit)


class GenerationCache(AppendOnlyFile):
    """Answers by question key, read from and appended to one JSONL file (`path`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.answers = {str(r["key"]): str(r["answer"]) for _, r in complete_records(self.path)
                        if "key" in r and "answer" in r}
        self._digests: dict[str, str] = {}
        self.hits = self.generated = 0

    def _image_digest(self, path: str) -> str:
        if path not in self._digests:
            self._digests[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return self._digests[path]

    def key(self, generator: Generator, request: Request, max_new_tokens: int) -> str:
        body = json.dumps({"model": generator.fingerprint, "prompt": request.prompt, "greedy": True,
                           "max_new_tokens": max_new_tokens,
                           "images": [self._image_digest(p) for p in request.images]})
        return hashlib.sha256(body.encode()).hexdigest()

    def answer(self, generator: Generator, requests: list[Request], max_new_tokens: int, batch_size: int,
               on_answers: Progress | None = None) -> list[str]:
        """Every request's answer, from the cache where it has one; the rest generated in batches, each batch
        appended to the cache (synced) as soon as it is answered. Call inside `opened()`."""
        keys = [self.key(generator, r, max_new_tokens) for r in requests]
        todo = {k: r for k, r in zip(keys, requests, strict=True) if k not in self.answers}
        self.hits += len(keys) - len(todo)  # answered without generating: cached, or asked twice here
        missing = list(todo)
        done = 0
        for batch in generator.batches(list(todo.values()), max_new_tokens, batch_size) if todo else ():
            lines = [{"key": k, "answer": a} for k, a in zip(missing[done:done + len(batch)], batch, strict=True)]
            append_synced(self._handle, lines)
            self.answers.update((line["key"], line["answer"]) for line in lines)
            done += len(batch)
            self.generated += len(batch)
            if on_answers is not None:
                on_answers(len(batch))
        return [self.answers[k] for k in keys]
