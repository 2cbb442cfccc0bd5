"""Prompt and response codecs: MLE states -> prompt token ids, completion ids -> response text.

`SpecCodec` (tiny models): a word-level tokenizer over spec prompts; the response is a spec.
`ChatCodec` (real models): the Qwen3 tokenizer and chat template over the full prompts.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from rollout.env.prompts import build_prompt, spec_prompt
from rollout.env.spec_vocab import build_spec_tokenizer
from rollout.env.state import State
from rollout.env.tasks import Task


class Codec(Protocol):
    mode: str
    vocab_size: int
    stop_ids: tuple[int, ...]
    pad_id: int

    def encode_prompt(self, state: State, task: Task) -> list[int]: ...

    def decode_response(self, ids: list[int]) -> str: ...

    def encode_response(self, text: str) -> list[int]: ...


class SpecCodec:
    """Word-level spec mode for tiny models."""

    mode = "spec"

    def __init__(self, tasks: list[Task], max_prompt_tokens: int | None = None):
        self.tokenizer = build_spec_tokenizer(tasks)
        self.vocab_size = self.tokenizer.vocab_size
        self.stop_ids = (self.tokenizer.eos_id,)
        self.pad_id = self.tokenizer.pad_id
        self.max_prompt_tokens = max_prompt_tokens

    def encode_prompt(self, state: State, task: Task) -> list[int]:
        """The prompt's ids, at most `max_prompt_tokens`: a parent spec too long to fit (a child's
        prompt quotes it) keeps its leading words."""
        ids = self.tokenizer.encode(spec_prompt(state, task), add_bos=True)
        limit = self.max_prompt_tokens
        if limit is None or len(ids) <= limit or not state.code:
            return self._fits(ids, task)
        words = state.code.strip().splitlines()[0].split(" ") if state.code.strip() else []
        while words and len(ids) > limit:
            words = words[:-1]
            ids = self.tokenizer.encode(spec_prompt(dataclasses.replace(state, code=" ".join(words)), task),
                                        add_bos=True)
        return self._fits(ids, task)

    def _fits(self, ids: list[int], task: Task) -> list[int]:
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            raise ValueError(f"task {task.id}: the spec prompt has {len(ids)} tokens, over the room that "
                             f"'train.length_buckets' leaves after 'rollout.max_new_tokens' ({self.max_prompt_tokens})")
        return ids

    def decode_response(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i not in self.stop_ids])

    def encode_response(self, text: str) -> list[int]:
        """The completion ids a policy would generate for `text`, stop token included."""
        return self.tokenizer.encode(text, add_eos=True)


class ChatCodec:
    """Qwen3 chat mode: full prompts within a token budget, fenced-code responses."""

    mode = "code"

    def __init__(self, tokenizer=None, budget_tokens: int = 6000):
        if tokenizer is None:
            from ace_jax.tokenizer import load_qwen3_tokenizer
            tokenizer = load_qwen3_tokenizer()
        self.tokenizer = tokenizer
        self.budget_tokens = budget_tokens
        self.vocab_size = len(tokenizer)
        self.stop_ids = (tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>"))
        self.pad_id = tokenizer.pad_token_id

    def count_tokens(self, text: str) -> int:
        return len(self.count_ids(text))

    def encode_prompt(self, state: State, task: Task) -> list[int]:
        """The chat prompt's token ids, at most `budget_tokens` (counted with the real tokenizer)."""
        from ace_jax.train.lengths import CHAT_TEMPLATE_RESERVE
        prompt = build_prompt(state, task, budget_tokens=self.budget_tokens - CHAT_TEMPLATE_RESERVE,
                              count_tokens=self.count_tokens)
        ids = list(self.tokenizer.apply_chat_template(prompt.messages(), add_generation_prompt=True, tokenize=True,
                                                      return_dict=False))
        if len(ids) > self.budget_tokens:
            raise ValueError(f"task {task.id}: the prompt has {len(ids)} tokens, over env.prompt_budget_tokens "
                             f"({self.budget_tokens})")
        return ids

    def decode_response(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False).replace("<|im_end|>", "")

    def encode_response(self, text: str) -> list[int]:
        """The assistant turn's ids for `text`, ending in <|im_end|> as the chat template does."""
        return self.count_ids(text) + [self.stop_ids[0]]

    def count_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def make_codec(mode: str, tasks: list[Task], budget_tokens: int | None = None) -> Codec:
    """The codec of an action mode: `spec` (word vocabulary over `tasks`) or `code` (Qwen3 chat),
    with prompts of at most `budget_tokens` (code mode: 6000 unless given)."""
    if mode == "spec":
        return SpecCodec(tasks, max_prompt_tokens=budget_tokens)
    if mode == "code":
        return ChatCodec(budget_tokens=6000 if budget_tokens is None else budget_tokens)
    raise ValueError(f"action mode {mode!r}; allowed: ['code', 'spec']")
