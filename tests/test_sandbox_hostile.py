"""Hostile scripts on every isolating backend: each is contained, gets reward 0 with a reason,
and leaves the host and the next execution unaffected.

Every attack, if it worked, would write a valid submission (or the private answers), so a
breach shows up as a reward above 0 as well as in the host-side checks. The sandboxes are
built here without skipping: a missing bubblewrap or docker engine fails with its reason.
"""

import os
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pandas as pd
import pytest

from rollout.env.execute import execute
from rollout.env.tasks import TaskConfig, write_task
from rollout.sandbox.base import Limits
from rollout.sandbox.select import make_sandbox
from rollout.sandbox.slots import is_root, processes_of

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
    run_contained(sandbox, task, code, "out of memory")


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
