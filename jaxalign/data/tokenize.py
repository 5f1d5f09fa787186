"""Text examples -> token ids, truncated to the configured lengths.

Prompt and each completion are tokenized as separate strings, so the boundary
between them is exact (no BPE merge straddles it). Completions end with EOS
unless a chat template rendered them (the template closes the turn itself);
prompts start with BOS when the tokenizer's own post-processor would add one.

Truncation: a prompt longer than ``max_prompt_length`` keeps its end (BOS
stays); then each completion is cut from the right to fit ``max_length``
together with the prompt. ``on_overlong`` chooses between doing that
(``truncate``), dropping the example (``drop``) or raising (``raise``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jaxalign.data.errors import DataError
from jaxalign.data.formats import TextExample

BRANCH_FIELDS = {1: ("completion",), 2: ("chosen", "rejected")}
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|im_end|>", "<eos>", "<|end_of_text|>")


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedExample:
    """One example as token ids (all ``np.int32``; masks ``bool``).

    prompt: ``[Lp]``; completions: one ``[Lc]`` array per branch (chosen,
    rejected for pairs); loss_masks: ``[Lc]`` per branch, True where the token
    is a training target; prompt_loss: prompt tokens after the first are
    targets too (SFT with ``completion_only_loss: false``).
    """

    prompt: np.ndarray
    completions: tuple[np.ndarray, ...]
    loss_masks: tuple[np.ndarray, ...]
    prompt_loss: bool = False
    margin: float | None = None
    label: float | None = None
    truncated: bool = False
    where: str = ""
    example_id: int = -1  # index of the example in its split (precomputed reference log-probs key on it)
    columns: Mapping[str, float] = dataclasses.field(default_factory=dict)  # batch columns [R, K] (data.columns)

    @property
    def length(self) -> int:
        """Tokens the example takes in a packed row (the prompt stored once)."""
        return len(self.prompt) + sum(len(c) for c in self.completions)


@dataclasses.dataclass(frozen=True)
class Dropped:
    """Placeholder for an example dropped by ``on_overlong: drop``."""

    reason: str
    where: str


class ExampleTokenizer:
    """Callable ``TextExample -> TokenizedExample | Dropped``; pure given the tokenizer."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        max_prompt_length: int | None = None,
        on_overlong: str = "truncate",
        loss_on_prompt: bool = False,
    ):
        if tokenizer.eos_token_id is None:
            raise ValueError("data: the tokenizer has no EOS token; completions need one to end")
        self.max_length = max_length
        self.prompt_limit = max_prompt_length if max_prompt_length is not None else max_length - 1
        self.on_overlong = on_overlong
        self.loss_on_prompt = loss_on_prompt
        self.eos = int(tokenizer.eos_token_id)
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._tokenizer = tokenizer
        self.bos = _bos_added_by(tokenizer)

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        if self._backend is not None:  # the Rust tokenizer directly: a third of the per-call cost
            return self._backend.encode(text, add_special_tokens=False).ids
        return self._tokenizer.encode(text, add_special_tokens=False)

    def __call__(self, example: TextExample) -> TokenizedExample | Dropped:
        prompt = self.encode(example.prompt)
        if self.bos is not None and prompt[:1] != [self.bos]:
            prompt = [self.bos, *prompt]
        completions, masks = [], []
        for pieces in example.completions:
            ids: list[int] = []
            mask: list[bool] = []
            for text, in_loss in pieces:
                piece_ids = self.encode(text)
                ids += piece_ids
                mask += [in_loss or self.loss_on_prompt] * len(piece_ids)
            if not example.chat:
                ids.append(self.eos)
                mask.append(True)
            completions.append(ids)
            masks.append(mask)
        if not prompt and completions:  # e.g. plain text without BOS: nothing predicts the first token
            prompt = [completions[0].pop(0)]
            masks[0].pop(0)
        return self._fit(example, prompt, completions, masks)

    def _fit(self, example: TextExample, prompt: list[int], completions: list[list[int]],
             masks: list[list[bool]]) -> TokenizedExample | Dropped:
        too_long = self._overlong_field(prompt, completions)
        truncated = False
        if too_long is not None:
            field, detail = too_long
            if self.on_overlong == "raise":
                raise DataError(example.where, "overlong", f"{detail} (on_overlong: raise)", field)
            if self.on_overlong == "drop":
                return Dropped("overlong", example.where)
            truncated = True
            if len(prompt) > self.prompt_limit:  # keep the end, which leads into the reply; keep BOS
                keep = self.prompt_limit - (self.bos is not None)
                prompt = ([self.bos] if self.bos is not None else []) + prompt[len(prompt) - keep:]
            room = self.max_length - len(prompt)
            completions = [ids[:room] for ids in completions]
            masks = [mask[:room] for mask in masks]
        return TokenizedExample(
            prompt=np.asarray(prompt, dtype=np.int32),
            completions=tuple(np.asarray(ids, dtype=np.int32) for ids in completions),
            loss_masks=tuple(np.asarray(mask, dtype=bool) for mask in masks),
            prompt_loss=self.loss_on_prompt,
            margin=example.margin,
            label=None if example.label is None else float(example.label),
            truncated=truncated,
            where=example.where,
            columns=example.columns,
        )

    def _overlong_field(self, prompt: list[int], completions: list[list[int]]) -> tuple[str, str] | None:
        if len(prompt) > self.prompt_limit:
            return "prompt", f"prompt is {len(prompt)} tokens, over the limit of {self.prompt_limit}"
        fields = BRANCH_FIELDS.get(len(completions)) or [f"ranking[{i}]" for i in range(len(completions))]
        for field, ids in zip(fields, completions):
            if len(prompt) + len(ids) > self.max_length:
                return field, f"prompt + {field} is {len(prompt) + len(ids)} tokens, over max_length {self.max_length}"
        return None


def _bos_added_by(tokenizer: Any) -> int | None:
    """BOS id if the tokenizer defines one and its post-processor prepends it."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return int(bos) if with_special[:1] == [bos] else None


def _tokenizer_class(folder: Path) -> Any:
    """The class ``AutoTokenizer`` would pick for ``folder``. A folder whose
    ``tokenizer_config.json`` names ``PreTrainedTokenizerFast`` (the built-in tokenizers and
    folders exported from them) gets that class without importing ``AutoTokenizer``, which
    imports transformers' model configuration and with it torch when installed: 2-5 s of
    every run's start-up on a 2-core machine."""
    try:
        named = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        named = None
    if named == "PreTrainedTokenizerFast" and (folder / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast
    from transformers import AutoTokenizer

    return AutoTokenizer


def _from_folder_or_hub(name: str) -> Any:
    """A local folder's tokenizer, or a hub id's (when the hub is reachable); clear errors otherwise."""
    from jaxalign import hub

    folder = Path(name).expanduser()
    if not folder.is_dir() and (hub.looks_like_path(name) or Path(name).exists()):
        raise hub.missing_folder_error(name, "tokenizer")
    try:
        return _tokenizer_class(folder).from_pretrained(name)
    except (OSError, ValueError) as err:
        if folder.is_dir():  # a local folder without usable tokenizer files
            raise ValueError(f"tokenizer: {name} holds no usable tokenizer files ({str(err).splitlines()[0]})") from err
        raise hub.hub_unavailable_error(name, err, "model.path (or --model)") from err


def load_tokenizer(path_or_name: str) -> Any:
    """A transformers tokenizer with a pad token.

    ``"builtin"`` is the quickstart's small BPE and ``"builtin:alignment"`` the
    built-in alignment task's (``jaxalign.data.builtin.TOKENIZERS``); a ``.json`` file is a raw
    ``tokenizers`` file (EOS guessed from common names); anything else goes to
    ``AutoTokenizer.from_pretrained`` (a local folder, or a hub name when online; a folder
    naming ``PreTrainedTokenizerFast`` loads with that class, as AutoTokenizer would).
    Without a pad token, EOS is used for padding (batches mask padding anyway).
    """
    from transformers import PreTrainedTokenizerFast

    if path_or_name == "builtin" or str(path_or_name).startswith("builtin:"):
        from jaxalign.data.builtin import TOKENIZERS

        if path_or_name not in TOKENIZERS:
            raise ValueError(f"unknown built-in tokenizer '{path_or_name}'; choose from {', '.join(TOKENIZERS)}")
        path_or_name = str(TOKENIZERS[path_or_name][0])
    if str(path_or_name).endswith(".json") and Path(path_or_name).is_file():
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path_or_name))
        if tokenizer.eos_token is None:
            vocab = tokenizer.get_vocab()
            tokenizer.eos_token = next((name for name in EOS_CANDIDATES if name in vocab), None)
    else:
        tokenizer = _from_folder_or_hub(str(path_or_name))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
