"""A model behind an OpenAI-compatible chat-completions URL (vLLM, TGI, a hosted API): the one way ecomtune
talks to a served model, for judges and curation alike.

The API key comes from an environment variable, never the command line (where it would land in shell history
and process lists), and is sent only over https or to this machine unless the user allows plain http.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ecomtune.errors import ConfigError, EcomtuneError
from ecomtune.tasks.image_turn import image_turn


def is_endpoint(spec: str | None) -> bool:
    return bool(spec) and str(spec).startswith(("http://", "https://"))


def key_exposed(url: str) -> bool:
    """Whether the API key would cross a network in clear text: plain http to a host other than this machine."""
    from ipaddress import ip_address
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme != "http":
        return False
    host = parsed.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ip_address(host).is_loopback
    except ValueError:  # a host name
        return True


def completions_url(url: str) -> str:
    """The chat-completions address of a server given by its base URL (or by that address itself)."""
    base = url.rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/v1/chat/completions"


def image_part(path: str | Path) -> dict:
    """An image file as an OpenAI `image_url` content part (a data URL: the server needs no access to our disk)."""
    kind = mimetypes.guess_type(str(path))[0] or "image/png"
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{kind};base64,{data}"}}


@dataclass
class ChatEndpoint:
    """One served model. `key_env`: the environment variable holding the API key (none sent when unset)."""

    url: str
    model: str = "default"
    key_env: str = "ECOMTUNE_API_KEY"
    timeout: float = 120.0

    def check_key_safety(self, option: str, allow_plain_http: bool) -> None:
        """Refuse, before any work, to send the key unencrypted to another machine unless allowed."""
        if os.environ.get(self.key_env) and key_exposed(self.url) and not allow_plain_http:
            raise ConfigError(f"{option} {self.url}: the API key ({self.key_env}) would be sent unencrypted over "
                              "plain http", fix="use an https:// URL, pass --plain-http to send it anyway (e.g. on a "
                              f"private network you trust), or unset {self.key_env}")

    def complete(self, text: str, images: list[str] | None = None, max_tokens: int = 64) -> str:
        """The reply to one user turn (`images` first, then `text`), greedy."""
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": max_tokens,
                           "messages": [image_turn(images or [], text, image_part)]}).encode()
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.key_env]}"
        url = completions_url(self.url)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
            return str(reply["choices"][0]["message"]["content"] or "").strip()
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise EcomtuneError(f"Endpoint {url} failed: {exc}",
                                fix="check the URL points at an OpenAI-compatible server that is running; work "
                                "finished so far is kept and a rerun continues from it") from None
