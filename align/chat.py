"""Conversations that every chat template accepts, and a check that runs before any stage does.

Templates differ in what they refuse: Mistral-style ones raise on a system turn and on two user turns in a
row; Gemma's has no system role either. The chain builds long conversations (few-shot examples, a response,
a critique request, a critique, a revision request), so they are fitted to the template first: a system turn is
folded into the next user turn where the template rejects it, and consecutive turns of one role are merged, so
roles strictly alternate. :func:`check_templates` renders one critique-revise conversation and one comparison
through each model's template before the first stage, so a template problem stops the run in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from align.config import ConfigError
from align.feedback import prompts

Message = dict[str, str]
_SYSTEM_OK: dict[str, bool] = {}  # chat template text -> whether it renders a system turn


def accepts_system(tokenizer: Any) -> bool:
    """Whether the template renders a system turn (some raise, which is how they say no)."""
    template = str(tokenizer.chat_template)
    if template not in _SYSTEM_OK:
        probe = [{"role": "system", "content": "Be brief."}, prompts.user("Hello.")]
        try:
            rendered = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
            _SYSTEM_OK[template] = "Be brief." in rendered
        except Exception:  # jinja's raise_exception surfaces as TemplateError; any failure means no
            _SYSTEM_OK[template] = False
    return _SYSTEM_OK[template]


def fit(messages: Sequence[Message], tokenizer: Any) -> list[Message]:
    """``messages`` in a form the template accepts: no system turn if it has none, strictly alternating roles.

    A system turn becomes the opening paragraph of the next user turn, so its instructions still reach the model;
    a later system turn (a few-shot example's) is folded the same way. Consecutive turns of one role are joined
    with a blank line.
    """
    out: list[Message] = []
    pending_system: list[str] = []
    keep_system = accepts_system(tokenizer)
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "system" and not (keep_system and i == 0):
            pending_system.append(content)
            continue
        if role == "user" and pending_system:
            content = "\n\n".join([*pending_system, content])
            pending_system = []
        if out and out[-1]["role"] == role:
            out[-1] = {"role": role, "content": f"{out[-1]['content']}\n\n{content}"}
        else:
            out.append({"role": role, "content": content})
    if pending_system:  # a trailing system turn: fold it into the last user turn
        last_user = max((k for k, m in enumerate(out) if m["role"] == "user"), default=None)
        if last_user is None:
            out.append(prompts.user("\n\n".join(pending_system)))
        else:
            out[last_user] = prompts.user(f"{out[last_user]['content']}\n\n" + "\n\n".join(pending_system))
    return out


def render(tokenizer: Any, messages: Sequence[Message], **kwargs: Any) -> str:
    """``apply_chat_template`` on the fitted conversation, as text."""
    return tokenizer.apply_chat_template(fit(messages, tokenizer), tokenize=False, **kwargs)


def check_templates(tokenizer: Any, model: str, field: str, few_shot: Sequence[Sequence[Message]] = ()) -> None:
    """Render what the chain will ask of ``model`` and fail now, naming the model and the reason, if it cannot.

    One full critique-and-revise conversation (with the constitution's few-shot examples when they are used)
    and one (A)/(B) comparison, whose option letters must be readable as separate next tokens.
    """
    from align.feedback.preferences import comparison_conversation, option_split

    conversation = prompts.revision_messages(
        few_shot,
        [prompts.user("How do I sharpen a kitchen knife?"), prompts.assistant("Use a whetstone at a low angle.")],
        "Point out anything harmful in the last response.",
        "Nothing in it is harmful.",
        "Rewrite the response to remove anything harmful.",
    )
    comparison = comparison_conversation("How do I sharpen a knife?", "Use a whetstone.", "I can't help.", "Which?")
    for what, messages in (("critique-and-revise conversation", conversation), ("comparison", comparison)):
        try:
            text = render(tokenizer, messages, add_generation_prompt=True)
        except Exception as err:
            raise ConfigError(f"{field}: the chat template of {model} cannot render a {what}: {err}") from None
        if what == "comparison":
            try:
                option_split(tokenizer, text)
            except ValueError as err:
                raise ConfigError(f"{field}: {model} cannot answer (A)/(B) comparisons: {err}") from None
