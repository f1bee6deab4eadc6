"""Model judges for Multi-image Item Intelligence, beside the default `FieldMatchJudge` (`ecomtune.tasks.judging`,
where the verdicts, the judge protocol and the judge's question are):

- `EndpointJudge`: an OpenAI-compatible chat-completions endpoint given by URL (vLLM, TGI, ...).
- `LocalModelJudge`: a local Hugging Face causal LM.
Model judges see the reference facts and one claimed field, and answer with one word.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from ecomtune.errors import ConfigError, EcomtuneError
from ecomtune.infer.client import key_exposed
from ecomtune.tasks.judging import FieldMatchJudge, Judge, Verdict, judge_prompt, parse_verdict


@dataclass
class EndpointJudge:
    url: str
    model: str = "judge"
    timeout: float = 60.0
    name: str = "endpoint"

    def judge(self, key: str, value: object, reference: Mapping[str, object]) -> Verdict:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 5,
                           "messages": [{"role": "user", "content": judge_prompt(key, value, reference)}]}).encode()
        headers = {"Content-Type": "application/json"}
        if os.environ.get("ECOMTUNE_JUDGE_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['ECOMTUNE_JUDGE_API_KEY']}"
        url = self.url.rstrip("/") + ("" if self.url.rstrip("/").endswith("/chat/completions")
                                      else "/v1/chat/completions")
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            raise EcomtuneError(f"Judge endpoint {url} failed: {exc}",
                                fix="check --judge-url points at an OpenAI-compatible server that is running") from None
        return parse_verdict(reply["choices"][0]["message"]["content"])


class LocalModelJudge:
    name = "local-model"

    def __init__(self, model_id: str) -> None:
        from transformers import pipeline

        self.pipe = pipeline("text-generation", model=model_id)

    def judge(self, key: str, value: object, reference: Mapping[str, object]) -> Verdict:
        prompt = judge_prompt(key, value, reference)
        out = self.pipe(prompt, max_new_tokens=5, do_sample=False, return_full_text=False)
        return parse_verdict(out[0]["generated_text"])


def make_judge(spec: str | None, allow_plain_http_key: bool = False) -> Judge:
    """`None`/"field-match", an http(s) URL (endpoint judge), or a local model folder / hub id. The API key
    (`ECOMTUNE_JUDGE_API_KEY`) is sent only over https or to this machine, unless `allow_plain_http_key`."""
    if not spec or spec == "field-match":
        return FieldMatchJudge()
    if spec.startswith(("http://", "https://")):
        if os.environ.get("ECOMTUNE_JUDGE_API_KEY") and key_exposed(spec) and not allow_plain_http_key:
            raise ConfigError(f"--judge {spec}: the API key would be sent unencrypted over plain http",
                              fix="use an https:// URL, or pass --judge-plain-http to send it anyway (e.g. on a "
                              "private network you trust), or unset ECOMTUNE_JUDGE_API_KEY")
        return EndpointJudge(spec)
    return LocalModelJudge(spec)
