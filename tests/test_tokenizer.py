"""The offline Qwen3 tokenizer: real vocabulary, Qwen3's special token ids, chat template."""

import pytest
from transformers import AutoTokenizer

from ace_jax.tokenizer import SPECIAL_IDS, build_qwen3_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_qwen3_tokenizer()


def test_special_token_ids(tokenizer):
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                "<tool_call>": 151657, "</tool_call>": 151658, "<tool_response>": 151665,
                "<think>": 151667, "</think>": 151668}
    for token, idx in expected.items():
        assert tokenizer.convert_tokens_to_ids(token) == idx == SPECIAL_IDS[token]
    assert len(tokenizer) == 151669
    assert tokenizer.eos_token_id == 151645 and tokenizer.pad_token_id == 151643


def test_known_encodings(tokenizer):
    # Qwen2/3 BPE: single-digit numbers, "Hello" 9707, " world" 1879, "!" 0.
    assert tokenizer.encode("Hello world!") == [9707, 1879, 0]
    assert tokenizer.encode(" 12345") == [220, 16, 17, 18, 19, 20]
    text = "def f(x):\n    return x ** 2  # ünïcode ✓"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("<think>plan</think>")[0] == 151667


def test_chat_template_and_save(tokenizer, tmp_path):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    no_think = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=False)
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert reloaded.encode("Hello world! <|im_end|>") == tokenizer.encode("Hello world! <|im_end|>")
    assert reloaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
