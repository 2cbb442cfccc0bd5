"""The sandbox backends behind one interface: conventions, limits, selection, worker pool."""

import logging
import os
import sys
from pathlib import Path

import pytest

from rollout.sandbox import bwrap as bwrap_module
from rollout.sandbox.base import Limits, SandboxError, SandboxRefused, SandboxUnavailable, sandbox_env
from rollout.sandbox.bwrap import BwrapSandbox
from rollout.sandbox.docker_backend import connect, kill_container, leftover_containers
from rollout.sandbox.image import ensure_image, image_tag, rootfs_tar
from rollout.sandbox.pool import WorkerPool
from rollout.sandbox.select import make_sandbox
from rollout.sandbox.slots import UidPool, is_root
from rollout.sandbox.solution_env import SolutionEnv, check_paths
from rollout.sandbox.subprocess_backend import SubprocessSandbox

BACKENDS = ["bwrap", "docker", "subprocess"]


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request):
    with make_sandbox(request.param, force_unisolated=True) as sb:
        yield sb


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    d.chmod(0o755)  # scripts run as an unprivileged uid
    (d / "train.csv").write_text("id,x\n1,0.5\n2,1.5\n")
    (d / "sample_submission.csv").write_text("id,y\n1,0\n")
    return d


CONVENTIONS = """
import os, sys
print("ENV", sorted(os.environ))
print("HOSTNAME", os.environ.get("HOSTNAME", "sandbox"))
print("THREADS", os.environ["OMP_NUM_THREADS"], os.environ["OPENBLAS_NUM_THREADS"])
print("DATA", sorted(os.listdir("data")))
try:
    open("data/new.csv", "w").write("x")
    print("DATA_WRITABLE")
except OSError:
    print("DATA_READONLY")
import numpy, pandas, sklearn
total = pandas.read_csv("data/train.csv")["x"].sum()
print("validation_metric:", total)
print("to stderr", file=sys.stderr)
open("submission.csv", "w").write("id,y\\n1," + str(total) + "\\n")
"""


def test_script_conventions(sandbox, data_dir, monkeypatch):
    monkeypatch.setenv("ACE_JAX_HOST_SECRET", "leak")
    res = sandbox.run(CONVENTIONS, data_dir, Limits(timeout_s=60))
    assert res.ok and res.failure_reason() is None, res.stderr_tail
    assert res.submission == b"id,y\n1,2.0\n" and "validation_metric: 2.0" in res.stdout_tail
    assert "to stderr" in res.stderr_tail and res.sandbox == sandbox.name
    env_line = next(ln for ln in res.stdout_tail.splitlines() if ln.startswith("ENV"))
    seen = set(eval(env_line[4:]))
    assert "ACE_JAX_HOST_SECRET" not in seen and seen - {"PWD", "HOSTNAME"} == set(sandbox_env(sys.executable))
    assert "HOSTNAME sandbox" in res.stdout_tail  # docker sets it; it is not the host's
    assert "THREADS 1 1" in res.stdout_tail and "DATA ['sample_submission.csv', 'train.csv']" in res.stdout_tail
    if sandbox.isolated:
        assert "DATA_READONLY" in res.stdout_tail
    assert not (data_dir / "new.csv").exists() or not sandbox.isolated


def test_exit_codes_and_reasons(sandbox, data_dir):
    res = sandbox.run("raise SystemExit(3)", data_dir, Limits(timeout_s=30))
    assert res.exit_code == 3 and res.failure_reason() == "crashed: exit code 3" and res.submission is None
    res = sandbox.run("raise ValueError('boom')", data_dir, Limits(timeout_s=30))
    assert res.failure_reason().endswith("ValueError: boom")
    res = sandbox.run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", data_dir, Limits(timeout_s=30))
    assert res.failure_reason() == "killed by signal SIGSEGV"


def test_timeout_and_cpu_limit(sandbox, data_dir):
    res = sandbox.run("import time\ntime.sleep(60)", data_dir, Limits(timeout_s=1.5))
    assert res.timed_out and res.exit_code is None and res.runtime_s < 30
    assert res.failure_reason().startswith("timeout")
    res = sandbox.run("while True:\n    pass", data_dir, Limits(timeout_s=30, cpu_s=1))
    assert not res.timed_out and res.failure_reason().startswith("cpu time limit exceeded"), res


def test_output_tail_is_bounded(sandbox, data_dir):
    res = sandbox.run("for i in range(100000):\n    print('line', i)", data_dir, Limits(timeout_s=30, tail_bytes=1000))
    assert res.ok and len(res.stdout_tail) <= 1000 and res.stdout_tail.rstrip().endswith("line 99999")
    assert res.stdout_bytes > 1_000_000


def test_subprocess_is_refused_unless_forced(tmp_path):
    with pytest.raises(SandboxRefused, match="not isolated"):
        SubprocessSandbox()
    with pytest.raises(SandboxRefused, match="not isolated"):
        make_sandbox("subprocess")
    with pytest.raises(ValueError, match="unknown sandbox 'vm'"):
        make_sandbox("vm")


def test_auto_picks_bwrap_and_logs_it(caplog):
    with caplog.at_level(logging.INFO, logger="rollout.sandbox.select"):
        with make_sandbox("auto") as sb:
            assert sb.name == "bwrap" and sb.isolated
    assert "sandbox auto: using bwrap" in caplog.text


def test_unreadable_data_is_a_clear_error(tmp_path):
    if not is_root():
        pytest.skip("only root runs scripts under another uid")
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    with BwrapSandbox() as sb:
        with pytest.raises(SandboxError, match="not readable by the sandbox"):
            sb.run("print(1)", secret)


def test_missing_bwrap_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(bwrap_module.shutil, "which", lambda name, path=None: None)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        BwrapSandbox()
    assert "missing bwrap" in bwrap_module.probe()


def _timed(sandbox, slot, i):
    code = "import os, time\nt0 = time.time()\ntime.sleep(0.6)\nprint(os.getuid(), t0, time.time())"
    res = sandbox.run(code, _timed.data_dir, Limits(timeout_s=30), slot)
    uid, start, end = res.stdout_tail.split()
    return slot, int(uid), float(start), float(end)


def test_worker_pool_runs_in_parallel_on_distinct_slots(data_dir):
    _timed.data_dir = data_dir
    with BwrapSandbox() as sb, WorkerPool(sb, workers=2) as pool:
        runs = pool.map(_timed, range(6))
        slot_uids = {slot: sb.slot_uid(slot) for slot in (0, 1)}
    assert {r[0] for r in runs} == {0, 1}
    for slot in (0, 1):  # a slot runs one script at a time
        spans = sorted((s, e) for sl, _, s, e in runs if sl == slot)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    overlaps = sum(1 for i, a in enumerate(runs) for b in runs[i + 1:] if a[2] < b[3] and b[2] < a[3])
    assert overlaps >= 1  # two slots ran at the same time
    if is_root():  # one unprivileged uid per slot
        uids = {slot: uid for slot, uid, _, _ in runs}
        assert uids == slot_uids and uids[0] != uids[1] and min(uids.values()) >= 60000


def test_uid_pool_never_shares_a_uid():
    a, b = UidPool(base=61000, count=4), UidPool(base=61000, count=4)
    got = [a.acquire(), b.acquire(), a.acquire()]
    assert len(set(got)) == 3
    a.release_all()
    assert b.acquire() in got[::2]
    b.release_all()


def test_solution_env_mounts():
    env = SolutionEnv.current()
    assert os.path.realpath(sys.prefix) in env.mounts and env.python.endswith(os.path.basename(sys.executable))
    assert all(not m.startswith("/usr/") for m in env.mounts)
    with pytest.raises(ValueError, match="collides"):
        check_paths(SolutionEnv("/sandbox/venv/bin/python", ("/sandbox/venv",)), ("/sandbox",))


def test_docker_image_is_local_and_idempotent():
    assert rootfs_tar() == rootfs_tar()
    client = connect()
    try:
        assert ensure_image(client) == image_tag() == ensure_image(client)
        assert leftover_containers(client) == []  # every run removed its container
    finally:
        client.close()


def test_docker_kill_of_a_container_that_just_exited_is_not_an_error():
    import docker.errors
    from docker.types import Mount

    client = connect()
    container = client.containers.create(image=ensure_image(client), command=["/bin/true"], network_mode="none",
                                         mounts=[Mount("/usr", "/usr", type="bind", read_only=True)])
    try:
        container.start()
        assert container.wait(timeout=30)["StatusCode"] == 0
        with pytest.raises(docker.errors.APIError):  # the race: the timeout fired as it exited
            container.kill()
        kill_container(container)
    finally:
        container.remove(force=True)
        client.close()


def test_bwrap_says_once_how_aggregate_limits_are_enforced(caplog, data_dir):
    with caplog.at_level(logging.WARNING, logger="rollout.sandbox.bwrap"):
        with BwrapSandbox() as sandbox:
            for _ in range(2):
                assert sandbox.run("print('ok')", data_dir, Limits(timeout_s=30)).ok
    said = [r.getMessage() for r in caplog.records if "cgroup" in r.getMessage()]
    if sandbox.cgroups.available:
        assert said == [] and sandbox.aggregate == "cgroup"
    else:
        assert len(said) == 1 and sandbox.cgroups.reason in said[0]
        assert sandbox.aggregate == ("uid-memory-poll" if is_root() else "none")


def test_seccomp_policy_encodings():
    import json
    import struct

    from rollout.sandbox import seccomp

    for arch in seccomp.ARCHES:
        program = seccomp.bpf_program(arch)
        assert len(program) % 8 == 0 and len(program) // 8 < 256  # sock_filter entries; short jumps
        code, _, jf, k = struct.unpack("=HBBI", program[8:16])
        assert code == seccomp.JEQ and k == seccomp.AUDIT_ARCH[arch] and jf > 0  # a foreign ABI is killed
        profile = json.loads(seccomp.docker_profile(arch))
        denied = {n for rule in profile["syscalls"] if "args" not in rule for n in rule["names"]}
        assert set(seccomp.DENIED) <= denied and profile["defaultAction"] == "SCMP_ACT_ALLOW"
        refused = {a["value"] for rule in profile["syscalls"] for a in rule.get("args", []) if a["op"] == "SCMP_CMP_EQ"}
        assert refused.isdisjoint(seccomp.ALLOWED_FAMILIES) and 40 not in seccomp.ALLOWED_FAMILIES


def test_slot_cgroup_files(tmp_path):
    """What a slot group is given (on a plain directory: this host's cgroup v2 may lack the controllers)."""
    from rollout.sandbox.cgroups import SlotCgroups

    groups = SlotCgroups(tmp_path)
    assert groups.available and (tmp_path / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    procs = groups.prepare(3, Limits(memory_mb=512, cpus=1.5, max_procs=40))
    group = Path(procs).parent
    assert group == groups.parent / "slot-3" and groups.parent.name == f"ace-jax-sandbox-{os.getpid()}"
    assert (group / "memory.max").read_text() == str(512 << 20)
    assert (group / "cpu.max").read_text() == "150000 100000" and (group / "pids.max").read_text() == "40"
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n")
    assert groups.oom_kills(3) == 2 and groups.oom_kills(4) == 0
