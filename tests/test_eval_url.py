"""`ace-jax eval --url` against a real `ace-jax serve` process equals `ace-jax eval --hf` on the same
checkpoint and seed, over both APIs (OpenAI chat completions and SGLang's /generate), on imported
MLE-bench tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ace_jax.agent.codec import ChatCodec
from ace_jax.checkpoint import hf
from ace_jax.cli import main
from ace_jax.evaluate import ChatPolicy, TokenPolicy
from ace_jax.inference import JaxEngine
from rollout.env.mlebench_import import import_mlebench
from rollout.env.state import State
from rollout.env.tasks import load_tasks
from rollout.openai_client import OpenAIChatClient
from rollout.sglang import SGLangConfig, SGLangEngine
from tests.helpers.serving import serve_process, tiny_qwen3_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "mlebench"
MODEL = "tiny-qwen3"
MAX_NEW = 16
# The embedded engine's buckets for one sample of a ~400-token prompt: (1, 512, 16).
SERVE_FLAGS = ("--max-batch-size", "1", "--max-prompt-len", "512", "--max-new-tokens", str(MAX_NEW))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_url")
    report = import_mlebench(FIXTURE / "data", root / "tasks", FIXTURE / "competitions")
    assert len(report.converted) == 4
    ckpt = tiny_qwen3_checkpoint(root / "ckpt")
    proc = serve_process(ckpt, *SERVE_FLAGS, name=MODEL)
    proc.start()
    yield ckpt, str(root / "tasks"), proc.url
    proc.stop()


def test_policies_answer_alike(setup):
    ckpt, tasks_dir, url = setup
    tasks = load_tasks(tasks_dir)
    codec = ChatCodec()
    local = TokenPolicy(JaxEngine(hf.load(ckpt), eos_token_ids=codec.stop_ids), codec)
    sglang = TokenPolicy(SGLangEngine(SGLangConfig(mode="attach", urls=(url,))), codec)
    chat = ChatPolicy(OpenAIChatClient(url))
    assert chat.client.model == MODEL
    for tid in sorted(tasks)[:2]:
        kwargs = dict(temperature=0.0, max_new_tokens=MAX_NEW, seed=3)
        answers = [p.respond(State(tid), tasks[tid], **kwargs) for p in (local, sglang, chat)]
        assert answers[0][0] and answers[0] == answers[1] == answers[2]
    sampled = dict(temperature=1.0, max_new_tokens=MAX_NEW, seed=11)
    tid = sorted(tasks)[0]
    assert local.respond(State(tid), tasks[tid], **sampled) == chat.respond(State(tid), tasks[tid], **sampled)
    chat.client.close()


def _eval(tmp_path, name: str, *source: str, tasks_dir: str) -> dict:
    out = tmp_path / f"{name}.json"
    assert main(["eval", *source, "--tasks", tasks_dir, "--steps", "2", "--max-new-tokens", str(MAX_NEW),
                 "--sandbox", "bwrap", "--seed", "5", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_eval_url_equals_eval_hf(setup, tmp_path):
    ckpt, tasks_dir, url = setup
    base = _eval(tmp_path, "hf", "--hf", ckpt, tasks_dir=tasks_dir)
    assert base["tasks"] == 4 and base["model"] == ckpt and base["endpoint"] is None
    source = ("model", "endpoint", "api", "checkpoint_step")
    for api in ("openai", "sglang"):
        served = _eval(tmp_path, api, "--url", url, "--api", api, tasks_dir=tasks_dir)
        assert served["endpoint"] == url and served["api"] == api
        assert served["model"] == (MODEL if api == "openai" else ckpt)
        assert {k: v for k, v in served.items() if k not in source} == \
            {k: v for k, v in base.items() if k not in source}


def test_eval_url_errors_name_the_problem(setup, capsys):
    _, tasks_dir, url = setup
    assert main(["eval", "--url", url, "--api", "openai", "--model", "nope", "--tasks", tasks_dir,
                 "--steps", "1", "--sandbox", "bwrap"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and MODEL in err
    assert main(["eval", "--url", "http://127.0.0.1:9", "--tasks", tasks_dir, "--steps", "1"]) == 2
    assert "127.0.0.1:9" in capsys.readouterr().err
