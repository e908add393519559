"""The one redactor: credentials masked in values wherever they are, every key kept."""

from __future__ import annotations

import pytest

from align.config import RecipeConfig, to_dict
from align.redaction import MASK, redact, redact_text, secret_name

KEY = "sk-proj-" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7"


def test_ordinary_keys_and_values_are_kept():
    """max_new_tokens and max_prompt_tokens are settings; the W&B scrubber used to drop every key with "token"."""
    config = to_dict(RecipeConfig())
    assert redact(config) == config
    assert config["critique_revise"]["sampling"]["max_new_tokens"] == 256
    assert "max_prompt_tokens" in config["critique_revise"]["prompt_limits"]
    kept = {"input_hash": "9f" * 32, "tiny_key": "3fa2b6c1d9e04a17", "identity": "harmless@1.0.0+sha256:bd959acaa9fa"}
    assert redact(kept) == kept


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://user:hunter22@gpu-box:8000/v1", f"http://{MASK}@gpu-box:8000/v1"),
        ("https://tok@example.org/x?api_key=abc123&n=2", f"https://{MASK}@example.org/x?api_key={MASK}&n=2"),
        (f"key {KEY} pasted", f"key {MASK} pasted"),
        ("hf_" + "a1B2c3D4e5F6g7H8i9J0", MASK),
        ("AKIAIOSFODNN7EXAMPLE", MASK),
        ("Authorization: Bearer abc.def-123456", f"Authorization: Bearer {MASK}"),
        ("Zx8Kq2LmN4pR7sT1vW3yB6cD9fG0hJ5k", MASK),  # a long random key of no known provider
        ("meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Llama-3.1-70B-Instruct"),
    ],
)
def test_credentials_in_values_are_masked(value, expected):
    assert redact({"base_url": value}) == {"base_url": expected}
    assert redact_text(value) == expected


def test_values_under_credential_names_are_masked_unless_they_name_a_variable():
    config = {"backend": {"api_key_env": "OPENAI_API_KEY"}, "hub_token": "abc12345", "password": "p4ss", "n": 3}
    assert redact(config) == {"backend": {"api_key_env": "OPENAI_API_KEY"}, "hub_token": MASK, "password": MASK, "n": 3}
    assert redact({"backend": {"api_key_env": KEY}}) == {"backend": {"api_key_env": MASK}}
    assert [secret_name(n) for n in ("HF_TOKEN", "apiKey", "db_password", "max_new_tokens", "cache_key")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_values_of_credential_variables_in_the_environment_are_masked(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "plain-words-secret")
    assert redact_text("connecting with plain-words-secret now") == f"connecting with {MASK} now"


def test_the_wandb_tracker_keeps_every_setting_and_masks_credentials(tmp_path):
    from align.constitution import load_constitution
    from align.tracking import WandbTracker

    config = to_dict(RecipeConfig())
    config["critique_revise"]["backend"]["base_url"] = "http://me:hunter22@gpu-box:8000/v1"
    tracker = WandbTracker(tmp_path, "g", config, load_constitution("constitutions/harmless.yaml"))
    assert tracker.config["critique_revise"]["sampling"]["max_new_tokens"] == 256
    assert tracker.config["critique_revise"]["backend"]["base_url"] == f"http://{MASK}@gpu-box:8000/v1"
