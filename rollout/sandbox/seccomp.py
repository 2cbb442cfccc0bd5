"""The seccomp policy of every execution: deny what a solution script never needs.

Denied with EPERM: the kernel keyring (keyctl, add_key, request_key), io_uring, ptrace and
process_vm_*, bpf, perf_event_open, userfaultfd, namespace and mount calls, module and kexec
loading, file-handle opens. `socket`/`socketpair` fail with EAFNOSUPPORT for every family but
AF_UNIX, AF_INET and AF_INET6 (AF_VSOCK, netlink, packet, ...). `clone3` answers ENOSYS so
libc falls back to `clone` (its flags sit behind a pointer a filter cannot read).

One policy, two encodings: a classic BPF program for bubblewrap's `--seccomp FD`, and a JSON
profile for docker's `security_opt=["seccomp=..."]`.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import struct
import sys

DENIED = ("keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter", "io_uring_register",
          "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open", "userfaultfd",
          "unshare", "setns", "mount", "umount2", "pivot_root", "kexec_load", "kexec_file_load",
          "init_module", "finit_module", "delete_module", "open_by_handle_at", "name_to_handle_at")
SOCKET_CALLS = ("socket", "socketpair")
ALLOWED_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6

# Syscall numbers (from the kernel's syscall tables): name -> (x86_64, aarch64).
NUMBERS = {
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218), "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427), "ptrace": (101, 117),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "unshare": (272, 97), "setns": (308, 268),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "kexec_load": (246, 104),
    "kexec_file_load": (320, 294), "init_module": (175, 105), "finit_module": (313, 273),
    "delete_module": (176, 106), "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264),
    "socket": (41, 198), "socketpair": (53, 199), "clone3": (435, 435),
}
ARCHES = ("x86_64", "aarch64")
SYSCALLS = {arch: {name: nrs[i] for name, nrs in NUMBERS.items()} for i, arch in enumerate(ARCHES)}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
DOCKER_ARCHES = {"x86_64": ["SCMP_ARCH_X86_64"], "aarch64": ["SCMP_ARCH_AARCH64"]}
X32_BIT = 0x40000000

# Classic BPF opcodes and seccomp return values.
LD_ABS_W, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
RET_ALLOW, RET_KILL_PROCESS, RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000


def machine() -> str:
    """This host's architecture name, or ValueError when the policy has no table for it."""
    arch = platform.machine()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    if arch not in SYSCALLS:
        raise ValueError(f"no seccomp syscall table for architecture {arch!r} (have {', '.join(SYSCALLS)})")
    return arch


def _assemble(program: list) -> bytes:
    """Encode `(code, jt, jf, k)` instructions; jt/jf are label names (or 0), ("label", name) marks one."""
    where, n = {}, 0
    for ins in program:
        if ins[0] == "label":
            where[ins[1]] = n
        else:
            n += 1
    out, pc = [], 0
    for ins in program:
        if ins[0] == "label":
            continue
        code, jt, jf, k = ins
        jump = [0 if t == 0 else where[t] - pc - 1 for t in (jt, jf)]
        out.append(struct.pack("=HBBI", code, jump[0], jump[1], k))
        pc += 1
    return b"".join(out)


def bpf_program(arch: str | None = None) -> bytes:
    """The policy as a classic BPF program (struct sock_filter[]), for bwrap --seccomp."""
    arch = arch or machine()
    table = SYSCALLS[arch]
    arg0_low = 16 if sys.byteorder == "little" else 20  # seccomp_data.args[0], its low 32 bits
    prog: list = [(LD_ABS_W, 0, 0, 4), (JEQ, 0, "kill", AUDIT_ARCH[arch]), (LD_ABS_W, 0, 0, 0)]
    if arch == "x86_64":
        prog.append((JGE, "enosys", 0, X32_BIT))  # the x32 ABI aliases every call: refuse it
    prog += [(JEQ, "eperm", 0, table[name]) for name in DENIED]
    prog += [(JEQ, "socket", 0, table[name]) for name in SOCKET_CALLS]
    prog += [(JEQ, "enosys", 0, table["clone3"]), (RET, 0, 0, RET_ALLOW),
             ("label", "socket"), (LD_ABS_W, 0, 0, arg0_low)]
    prog += [(JEQ, "allow", 0, family) for family in ALLOWED_FAMILIES]
    prog += [(RET, 0, 0, RET_ERRNO | errno.EAFNOSUPPORT),
             ("label", "allow"), (RET, 0, 0, RET_ALLOW),
             ("label", "eperm"), (RET, 0, 0, RET_ERRNO | errno.EPERM),
             ("label", "enosys"), (RET, 0, 0, RET_ERRNO | errno.ENOSYS),
             ("label", "kill"), (RET, 0, 0, RET_KILL_PROCESS)]
    return _assemble(prog)


def bpf_fd(arch: str | None = None) -> int:
    """A readable, inheritable fd holding the BPF program (bwrap reads it to the end)."""
    fd = os.memfd_create("ace-jax-seccomp", 0)
    os.write(fd, bpf_program(arch))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def docker_profile(arch: str | None = None) -> str:
    """The policy as a docker seccomp profile (JSON): default allow, the denials above.

    Each socket rule compares the family once (EQ for the gaps, GE above the last allowed one),
    since one rule with several comparisons of the same argument is not portable."""
    arch = arch or machine()
    rules = [{"names": list(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
             {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}]
    top = max(ALLOWED_FAMILIES)
    for family in [f for f in range(top) if f not in ALLOWED_FAMILIES]:
        rules.append({"names": list(SOCKET_CALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EAFNOSUPPORT,
                      "args": [{"index": 0, "value": family, "op": "SCMP_CMP_EQ"}]})
    rules.append({"names": list(SOCKET_CALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EAFNOSUPPORT,
                  "args": [{"index": 0, "value": top + 1, "op": "SCMP_CMP_GE"}]})
    return json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "architectures": DOCKER_ARCHES[arch], "syscalls": rules})
