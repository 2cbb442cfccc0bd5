"""Hostile scripts on every isolating backend: each is contained, gets reward 0 with a reason,
and leaves the host and the next execution unaffected.

Every attack, if it worked, would write a valid submission (or the private answers), so a
breach shows up as a reward above 0 as well as in the host-side checks. The sandboxes are
built here without skipping: a missing bubblewrap or docker engine fails with its reason.
"""

import ctypes
import dataclasses
import errno
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rollout.env.execute import execute
from rollout.env.tasks import TaskConfig, write_task
from rollout.sandbox import seccomp
from rollout.sandbox.base import Limits
from rollout.sandbox.select import make_sandbox
from rollout.sandbox.slots import is_root, processes_of, sweep_stale_slot_dirs

BACKENDS = ["bwrap", "docker"]
COPY_SAMPLE = "import shutil\nshutil.copy('data/sample_submission.csv', 'submission.csv')\n"
LIMITS = Limits(timeout_s=3.0, max_procs=32, memory_mb=1024, max_file_mb=8, work_mb=64)
BREACH = "\nimport shutil\nshutil.copy('data/sample_submission.csv', 'submission.csv')\n"


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request):
    with make_sandbox(request.param) as sb:
        yield sb


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    rng = np.random.RandomState(0)
    train = pd.DataFrame({"id": range(30), "x": rng.normal(size=30), "y": rng.randint(0, 2, 30)})
    test = pd.DataFrame({"id": range(100, 110), "x": rng.normal(size=10)})
    answers = pd.DataFrame({"id": test.id, "y": rng.randint(0, 2, 10)})
    cfg = TaskConfig("hostile", "accuracy", "maximize", "classification", "id", "y", ("y",), ("0", "1"), 0.5, 0.9,
                     {"gold": 0.9, "silver": 0.8, "bronze": 0.7}, "train", "test")
    return write_task(tmp_path_factory.mktemp("tasks") / "hostile", cfg, "# hostile", train, test,
                      pd.DataFrame({"id": test.id, "y": 0}), answers)


def run_contained(sandbox, task, code, reason_fragment, limits=LIMITS):
    """Run an attack, check reward 0 with the reason, then check a normal run still works."""
    result = execute(task, code, sandbox, limits=limits)
    assert result.reward.reward == 0.0 and not result.valid, (result.reason, result.feedback.stdout_tail[-300:])
    assert result.reason and reason_fragment in result.reason, result.reason
    follow_up = execute(task, COPY_SAMPLE, sandbox, limits=Limits(timeout_s=30))
    assert follow_up.valid and follow_up.reward.reward == pytest.approx(0.3), follow_up.reason
    return result


def test_infinite_loop(sandbox, task):
    result = run_contained(sandbox, task, "while True:\n    pass\n", "timeout")
    assert result.execution.timed_out and result.execution.runtime_s < LIMITS.timeout_s + 5


def test_fork_bomb(sandbox, task):
    uid = sandbox.slot_uid(0) if is_root() else None
    peak, stop = [0], threading.Event()

    def watch():  # how many processes the slot uid runs while the bomb goes off
        while not stop.is_set():
            peak[0] = max(peak[0], len(processes_of(uid)))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    if uid is not None:
        watcher.start()
    try:
        bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
        run_contained(sandbox, task, bomb, "timeout")
    finally:
        stop.set()
        if uid is not None:
            watcher.join()
    if uid is not None:
        assert 0 < peak[0] <= LIMITS.max_procs, peak[0]
        assert processes_of(uid) == []


def test_allocate_50_gb(sandbox, task):
    code = "chunks = []\nfor i in range(50):\n    chunks.append(bytearray(1 << 30))\n" + BREACH
    # a cgroup OOM kill of a 1 GiB zeroing write can take seconds on a loaded host: not a timeout
    run_contained(sandbox, task, code, "out of memory", dataclasses.replace(LIMITS, timeout_s=15.0))


def test_write_outside_work_dir(sandbox, task, tmp_path):
    targets = [tmp_path / "host_marker", task.root / "private" / "pwned", task.public_dir / "pwned",
               sandbox.dirs.root / "pwned", sandbox.dirs.root / "slot-0" / "outbox" / "pwned"]
    inside = ["/usr/pwned", "data/pwned", "/etc/pwned", "/sandbox/outbox/pwned", "/proc/1/root/pwned"]
    code = (f"paths = {[str(t) for t in targets] + inside!r}\nok = []\n"
            "for p in paths:\n    try:\n        open(p, 'w').write('x')\n        ok.append(p)\n"
            "    except OSError:\n        pass\nprint('wrote', ok)\nif not ok:\n    raise SystemExit(1)\n" + BREACH)
    run_contained(sandbox, task, code, "crashed: exit code 1")
    for target in targets:
        assert not target.exists(), target
    assert not os.path.exists("/usr/pwned") and not os.path.exists("/pwned")


def test_read_private_answers(sandbox, task):
    answers = str(task.answers_path)
    code = (f"import os, shutil\nfor p in [{answers!r}, '../private/answers.csv', 'data/../../private/answers.csv',\n"
            f"          '/proc/1/root' + {answers!r}]:\n"
            "    try:\n        shutil.copy(p, 'submission.csv')\n        print('READ', p)\n        break\n"
            "    except OSError:\n        pass\nelse:\n"
            f"    os.symlink({answers!r}, 'submission.csv')  # let the host follow it\n")
    result = run_contained(sandbox, task, code, "no submission.csv")
    assert "READ" not in result.feedback.stdout_tail


def test_network(sandbox, task):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(8)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        host_ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        host_ip = "127.0.0.1"
    code = (f"import socket\nfor addr in [('127.0.0.1', {port}), ({host_ip!r}, {port}), ('172.17.0.1', {port}),\n"
            "             ('1.1.1.1', 53), ('8.8.8.8', 443)]:\n"
            "    try:\n        socket.create_connection(addr, timeout=1).close()\n        print('CONNECTED', addr)\n"
            "        break\n    except OSError as e:\n        print(addr, e)\nelse:\n    raise SystemExit(1)\n" + BREACH)
    try:
        run_contained(sandbox, task, code, "crashed")
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_signal_parent(sandbox, task):
    sentinel = subprocess.Popen(["sleep", "60"])
    try:
        code = (f"import os, signal\nfor pid in [{os.getpid()}, {sentinel.pid}, os.getppid(), 1]:\n"
                "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError as e:\n        print(pid, e)\n"
                "try:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\nraise SystemExit(1)\n")
        run_contained(sandbox, task, code, "")
        assert sentinel.poll() is None  # the host process lives on (and so do we)
    finally:
        sentinel.send_signal(signal.SIGKILL)
        sentinel.wait()


def test_flood_stdout(sandbox, task):
    code = "import sys\nblock = 'x' * (1 << 20)\nfor i in range(1024):\n    sys.stdout.write(block)\n" + BREACH
    result = run_contained(sandbox, task, code, "file size limit")
    ex = result.execution
    assert ex.stdout_bytes <= LIMITS.max_file_mb << 20
    assert len(result.feedback.stdout_tail) <= LIMITS.tail_bytes


def test_wide_header_submission(sandbox, task):
    code = "open('submission.csv', 'w').write(','.join(['0'] * 1_000_000) + '\\n' + '1,' * 1000 + '\\n')\n"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    start = time.monotonic()
    result = run_contained(sandbox, task, code, "the header")
    grading_s = time.monotonic() - start - result.execution.runtime_s
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    assert grading_s < 5 and peak_after - peak_before < 1 << 30, (grading_s, peak_after - peak_before)
    assert len(result.reason) <= 400


KEYS = seccomp.SYSCALLS[seccomp.machine()]
LIBC = ctypes.CDLL(None, use_errno=True)
SESSION_KEYRING, KEYCTL_READ, KEYCTL_SEARCH = -3, 11, 10


def _add_key(description: str, payload: bytes) -> int:
    key = LIBC.syscall(KEYS["add_key"], b"user", description.encode(), payload, len(payload), SESSION_KEYRING)
    assert key > 0, os.strerror(ctypes.get_errno())
    return key


def test_session_keyring_is_fresh_and_unreachable(sandbox, task):
    key = _add_key("ace-jax-host-secret", b"s3cret-payload")
    code = (f"import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nbreach = []\n"
            f"buf = ctypes.create_string_buffer(64)\n"
            f"if libc.syscall({KEYS['keyctl']}, {KEYCTL_READ}, {key}, buf, 64) > 0:\n    breach.append('read')\n"
            f"if libc.syscall({KEYS['request_key']}, b'user', b'ace-jax-host-secret', None, 0) > 0:\n"
            "    breach.append('request')\n"
            f"if libc.syscall({KEYS['add_key']}, b'user', b'ace-jax-planted', b'x', 1, {SESSION_KEYRING}) > 0:\n"
            "    breach.append('plant')\n"
            "try:\n    if 'ace-jax-host-secret' in open('/proc/keys').read():\n        breach.append('proc-keys')\n"
            "except OSError:\n    pass\n"
            "print('BREACH', breach)\nif not breach:\n    raise SystemExit(1)\n" + BREACH)
    result = run_contained(sandbox, task, code, "crashed: exit code 1")
    assert "BREACH []" in result.feedback.stdout_tail
    planted = LIBC.syscall(KEYS["keyctl"], KEYCTL_SEARCH, SESSION_KEYRING, b"user", b"ace-jax-planted", 0)
    assert planted == -1 and ctypes.get_errno() == errno.ENOKEY


DENIED_CALLS = """
import ctypes, errno, socket
libc = ctypes.CDLL(None, use_errno=True)
calls = {"io_uring_setup": (%(io_uring_setup)d, 8, ctypes.create_string_buffer(120)),
         "ptrace_attach_pid1": (%(ptrace)d, 16, 1, 0, 0), "bpf": (%(bpf)d, 0, ctypes.create_string_buffer(128), 128),
         "perf_event_open": (%(perf_event_open)d, ctypes.create_string_buffer(128), 0, -1, -1, 0),
         "keyctl": (%(keyctl)d, 0, -3, 0), "unshare_user": (%(unshare)d, 0x10000000)}
worked = []
for name, (nr, *args) in calls.items():
    if libc.syscall(nr, *args) >= 0:
        worked.append(name)
    print(name, errno.errorcode.get(ctypes.get_errno()))
for family in ("AF_VSOCK", "AF_NETLINK", "AF_PACKET", "AF_ALG"):
    try:
        socket.socket(getattr(socket, family), socket.SOCK_DGRAM if family != "AF_ALG" else socket.SOCK_SEQPACKET)
        worked.append(family)
    except OSError as e:
        print(family, errno.errorcode.get(e.errno))
socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()  # what solutions use still works
socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
print("SECCOMP", [ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("Seccomp:")])
print("WORKED", worked)
if not worked:
    raise SystemExit(1)
"""


def test_seccomp_denies_what_solutions_never_need(sandbox, task):
    result = run_contained(sandbox, task, DENIED_CALLS % KEYS + BREACH, "crashed: exit code 1")
    out = result.feedback.stdout_tail
    assert "WORKED []" in out and "SECCOMP ['2']" in out, out
    for name in ("io_uring_setup", "ptrace_attach_pid1", "bpf", "perf_event_open", "keyctl", "unshare_user"):
        assert f"{name} EPERM" in out, out
    for family in ("AF_VSOCK", "AF_NETLINK", "AF_PACKET", "AF_ALG"):
        assert f"{family} EAFNOSUPPORT" in out, out


def test_aggregate_memory_of_children_and_tmpfs(sandbox, task):
    limits = Limits(timeout_s=30.0, memory_mb=512, max_procs=32, work_mb=400, max_file_mb=400)
    code = ("import os, time\nopen('filler', 'wb').write(b'\\1' * (300 << 20))\nkids = []\n"
            "for i in range(4):\n    pid = os.fork()\n    if pid == 0:\n        x = b'\\1' * (300 << 20)\n"
            "        time.sleep(3)\n        os._exit(0)\n    kids.append(pid)\n"
            "if all(os.waitpid(p, 0)[1] == 0 for p in kids):\n    print('ALL CHILDREN RAN')\n" + BREACH.replace(
                "\nimport shutil", "\n    import shutil").replace("\nshutil", "\n    shutil"))
    result = run_contained(sandbox, task, code, "out of memory", limits)
    assert "ALL CHILDREN RAN" not in result.feedback.stdout_tail


@pytest.fixture
def high_host_nofile():
    """The host's soft RLIMIT_NOFILE raised to its hard limit, as on hosts set up for many files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_open_files_are_capped(sandbox, task, high_host_nofile):
    code = ("files = []\ntry:\n    for i in range(20000):\n        files.append(open('/dev/null'))\n"
            "except OSError as e:\n    print('stopped at', len(files), e)\nfor f in files:\n    f.close()\n"
            "if len(files) < 5000:\n"
            "    raise SystemExit(1)\n" + BREACH)
    result = run_contained(sandbox, task, code, "crashed: exit code 1")
    assert "Too many open files" in result.feedback.stdout_tail


SLOT_HOST = """
import sys
from rollout.sandbox.select import make_sandbox
sandbox = make_sandbox(sys.argv[1])
print(sandbox.dirs.root, flush=True)
sys.stdin.read()
"""


def test_slot_dirs_of_a_killed_host_are_swept(sandbox):
    host = subprocess.Popen([sys.executable, "-c", SLOT_HOST, sandbox.name], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    root = Path(host.stdout.readline().strip())
    assert root.is_dir()
    host.kill()
    host.wait()
    assert root.is_dir()  # SIGKILL skipped its cleanup
    assert root in sweep_stale_slot_dirs(root.parent) and not root.exists()
    assert sandbox.dirs.root.is_dir()  # a live host's directory stays
