"""One redactor for everything align stores or shows: manifests, reports, logs and W&B configs.

Credentials end up in configs by accident: a key pasted where the name of its environment variable belongs
(``backend.api_key_env``), a URL with ``user:password@`` in it, a token in a query string. So values are
what is checked, wherever they are: URL userinfo and credential query parameters, strings shaped like the
keys of the common providers (``sk-``, ``hf_``, ``ghp_``, AWS, Slack, ...) or like any long random key, and
the values of credential variables set in the environment. Keys are never dropped: ``max_new_tokens`` is an
ordinary setting, and a report or W&B run without it is wrong. A string under a key whose name says
credential (``hub_token``, ``api_key``, ``password``) is masked too, unless it is the name of an environment
variable (``api_key_env: OPENAI_API_KEY`` says where the key is, not what it is).
"""

from __future__ import annotations

import os
import re
from itertools import pairwise
from typing import Any

MASK = "[redacted]"

# Name parts that mark a credential: hub_token, WANDB_API_KEY, apiKey, db_password; not max_new_tokens,
# tokenizer or cache_key (a plain "key" names hashes and lookups as often as secrets).
_SECRET_PARTS = re.compile(r"token|secrets?|passw(?:or)?ds?|credentials?|apikeys?|auth|bearer")
_SECRET_PAIRS = {("api", "key"), ("api", "keys"), ("access", "key"), ("private", "key"), ("secret", "key")}
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")

_PATTERNS = (
    # scheme://user:password@host -> scheme://[redacted]@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@"), rf"\1{MASK}@"),
    # ?api_key=...&token=... in URLs
    (
        re.compile(r"(?i)([?&](?:api[_-]?key|access[_-]?token|auth|key|password|secret|sig|signature|token)=)[^&#\s]+"),
        rf"\1{MASK}",
    ),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{MASK}"),
    # provider key formats: OpenAI/Anthropic, Hugging Face, GitHub, GitLab, Slack, Google
    (
        re.compile(r"\b(?:sk-|hf_|gh[pousr]_|github_pat_|glpat-|xox[abeprs]-|AIza)[A-Za-z0-9_\-]{10,}"),
        MASK,
    ),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), MASK),  # AWS access key ids
)
# Any other long random key: 32+ characters mixing upper case, lower case and digits. Hex hashes (all lower
# case), ids and words are spared.
_RANDOM = re.compile(
    r"(?<![A-Za-z0-9_\-])(?=[A-Za-z0-9_\-]*[a-z])(?=[A-Za-z0-9_\-]*[A-Z])(?=[A-Za-z0-9_\-]*\d)"
    r"[A-Za-z0-9_\-]{32,}(?![A-Za-z0-9_\-])"
)


def secret_name(name: str) -> bool:
    """Whether a key or variable name says it holds a credential (``HF_TOKEN``, ``apiKey``, ``db_password``)."""
    parts = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    return any(_SECRET_PARTS.fullmatch(p) for p in parts) or any(p in _SECRET_PAIRS for p in pairwise(parts))


def redact_text(text: str) -> str:
    """``text`` with every credential-shaped substring, and the value of every credential variable set in the
    environment, replaced by ``[redacted]``."""
    for name, value in os.environ.items():
        if len(value) >= 8 and secret_name(name) and value in text:
            text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _RANDOM.sub(MASK, text)


def redact(value: Any, *, key: str = "") -> Any:
    """A copy of ``value`` (nested dicts, lists, strings) with its credentials masked and every key kept."""
    if isinstance(value, dict):
        return {k: redact(v, key=str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, key=key) for v in value]
    if isinstance(value, str):
        if key and secret_name(key) and value and not _ENV_NAME.fullmatch(value):
            return MASK
        return redact_text(value)
    return value
