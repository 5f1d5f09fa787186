"""Conversational rows -> text, through the tokenizer's chat template.

The template renders the whole conversation; prompt and completion are then
cut apart as text, so each can be tokenized on its own:

* prompt + reply: ``prompt = render(prompt, add_generation_prompt=True)`` and
  ``completion = render(prompt + reply)[len(prompt):]`` (TRL does the same).
* multi-turn ``messages`` for SFT: rendered turn by turn; each assistant reply
  (with the template's end-of-turn marker) is a piece in the loss, the text
  between replies (user turns, the next generation prompt) is not.

Templates whose rendering of a conversation does not start with the rendering
of its beginning (e.g. ones that rewrite earlier turns) cannot be cut this
way; such rows are reported as ``chat_template`` errors.
"""

from __future__ import annotations

from typing import Any, Sequence

from jaxalign.data.errors import DataError

Message = dict[str, str]
Piece = tuple[str, bool]  # (text, whether its tokens are in the loss)


class ChatRenderer:
    """Renders message lists with ``tokenizer.apply_chat_template``."""

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "data: conversational rows (lists of {role, content} messages) need a tokenizer with a chat "
                "template, and this tokenizer has none. Use a chat model's tokenizer, set "
                "tokenizer.chat_template, or convert the rows to plain prompt/completion strings."
            )
        self._tokenizer = tokenizer

    def render(self, messages: Sequence[Message], where: str, field: str, generation_prompt: bool = False) -> str:
        try:
            text = self._tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as err:  # jinja raises TemplateError subclasses and plain exceptions alike
            raise DataError(where, "chat_template", f"the chat template rejected the messages: {err}", field) from err
        return text

    def prompt_and_completion(
        self, prompt: Sequence[Message], reply: Sequence[Message], where: str, field: str
    ) -> tuple[str, str]:
        prompt_text = self.render(prompt, where, field, generation_prompt=True)
        full = self.render([*prompt, *reply], where, field)
        return prompt_text, _suffix_after(full, prompt_text, where, field)

    def conversation_pieces(self, messages: Sequence[Message], where: str, field: str) -> tuple[str, list[Piece]]:
        """``messages`` -> (prompt text up to the first reply, later pieces).

        Every assistant reply is a piece in the loss; everything else is not.
        """
        replies = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        if not replies or replies[0] == 0:
            raise DataError(where, "no_assistant_reply", "needs an assistant reply after at least one other message", field)
        pieces: list[Piece] = []
        rendered = ""
        for index in replies:
            before = self.render(messages[:index], where, field, generation_prompt=True)
            after = self.render(messages[: index + 1], where, field)
            pieces.append((_suffix_after(before, rendered, where, field), False))
            pieces.append((_suffix_after(after, before, where, field), True))
            rendered = after
        tail = _suffix_after(self.render(messages, where, field), rendered, where, field)
        if tail:
            pieces.append((tail, False))
        prompt_text = pieces.pop(0)[0]
        return prompt_text, [piece for piece in pieces if piece[0]]


def _suffix_after(full: str, head: str, where: str, field: str) -> str:
    if not full.startswith(head):
        raise DataError(
            where,
            "chat_template",
            "the chat template renders this conversation so that it does not start with the rendering of its "
            "first turns, so prompt and reply cannot be cut apart",
            field,
        )
    return full[len(head):]
