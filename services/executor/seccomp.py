"""The sandbox's seccomp filter: syscalls an action never needs, refused with EPERM.

The list follows Docker's default profile in spirit: kernel modules, kexec, mounts, namespaces (no
nested sandbox escapes through a new user namespace), tracing other processes, BPF and perf, keyrings,
clock and swap changes. Built once with libseccomp (through `pyseccomp`) and handed to bubblewrap as
compiled BPF, which applies it after its own setup and before exec'ing the tool.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile

log = logging.getLogger(__name__)

DENIED = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "delete_module", "finit_module",
    "fsconfig", "fsmount", "fsopen", "fspick", "init_module", "io_uring_setup", "ioperm", "iopl",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mount", "mount_setattr", "move_mount",
    "name_to_handle_at", "open_by_handle_at", "open_tree", "perf_event_open", "pivot_root",
    "process_vm_readv", "process_vm_writev", "ptrace", "quotactl", "reboot", "request_key", "setns",
    "settimeofday", "swapoff", "swapon", "syslog", "umount2", "unshare", "uselib", "userfaultfd",
    "vhangup",
)  # fmt: skip
# clone(2) flags that make namespaces: refused, so nothing inside builds a sandbox of its own.
NAMESPACE_FLAGS = 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


def build() -> tuple[bytes | None, str]:
    """(compiled BPF, how) or (None, why not)."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:  # the binding loads libseccomp.so when imported
        return None, f"libseccomp not available: {exc}"
    try:
        rules = seccomp.SyscallFilter(seccomp.ALLOW)
        deny = seccomp.ERRNO(errno.EPERM)
        for name in DENIED:
            try:
                rules.add_rule(deny, name)
            except (OSError, ValueError, RuntimeError):
                log.debug("seccomp: %s is not a syscall here", name)
        rules.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, NAMESPACE_FLAGS, NAMESPACE_FLAGS))
        # clone3 passes its flags in memory, which seccomp cannot inspect: ENOSYS makes libc fall
        # back to clone(2), which the rule above checks.
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        with tempfile.TemporaryFile() as out:
            rules.export_bpf(out)
            out.seek(0)
            program = out.read()
    except (OSError, ValueError, RuntimeError) as exc:
        return None, f"could not build the filter: {exc}"
    return program, f"libseccomp: {len(DENIED)} syscalls and namespace-making clone refused"


def program_fd(program: bytes) -> int:
    """A fresh readable fd holding `program`, for `bwrap --seccomp FD` (bwrap reads it to the end)."""
    fd = os.memfd_create("agentmesh-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
