"""Training-path defects found in review, each pinned by a test that failed before its fix."""

import pytest

from ace_jax.config import ConfigError, load_config
from ace_jax.train.rollouts import MissingLogprobs, _engine_logprobs
from rollout.engine import Completion, GenerateRequest, SamplingParams
from rollout.sglang import request_payload


@pytest.mark.parametrize("value", ["0", "0.0", "-1"])
def test_training_refuses_a_non_positive_temperature(value):
    with pytest.raises(ConfigError, match="rollout.temperature"):
        load_config(None, [f"rollout.temperature={value}"])


def test_a_completion_without_engine_logprobs_raises():
    with pytest.raises(MissingLogprobs, match="None logprobs for a completion of 3 tokens"):
        _engine_logprobs(Completion(token_ids=[4, 5, 6], logprobs=None, finish_reason="stop", prompt_tokens=2))
    with pytest.raises(MissingLogprobs, match="2 logprobs"):
        _engine_logprobs(Completion(token_ids=[4, 5, 6], logprobs=[-1.0, -2.0], finish_reason="stop", prompt_tokens=2))
    assert _engine_logprobs(Completion([4], [-0.5], "stop", 2)) == [-0.5]


def test_sglang_gets_a_distinct_sampling_seed_per_sample():
    request = GenerateRequest([1, 2, 3], SamplingParams(temperature=1.0, seed=40), n=3, rid="r")
    payload = request_payload(request)
    assert [p["sampling_seed"] for p in payload["sampling_params"]] == [40, 41, 42]
    assert payload["input_ids"] == [[1, 2, 3]] * 3 and payload["rid"] == ["r-0", "r-1", "r-2"]
    assert all("n" not in p for p in payload["sampling_params"])
    single = request_payload(GenerateRequest([1, 2], SamplingParams(seed=7), n=1))
    assert single["sampling_params"]["sampling_seed"] == 7 and single["sampling_params"]["n"] == 1
