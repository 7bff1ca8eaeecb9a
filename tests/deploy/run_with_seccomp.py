#!/usr/bin/python3
"""Runs a command under a seccomp profile in the OCI/Kubernetes JSON form, as runc would.

usage: run_with_seccomp.py PROFILE.json COMMAND [ARGS...]

Loads the profile with libseccomp (Debian's python3-seccomp) the way runc does for a Localhost
profile: defaultAction (+ defaultErrnoRet), then each rule of `syscalls` with its action and
argument conditions; names this architecture does not have are skipped, as runc skips them.
Only the native architecture is loaded (the command is a native binary). Then execs COMMAND,
so the filter applies to it and every thread it starts.
"""
import json
import os
import sys

import seccomp

OPS = {
    "SCMP_CMP_NE": seccomp.NE,
    "SCMP_CMP_LT": seccomp.LT,
    "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ,
    "SCMP_CMP_GE": seccomp.GE,
    "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def action(name, errno_ret):
    if name == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(1 if errno_ret is None else errno_ret)  # runc's default: EPERM
    if name == "SCMP_ACT_KILL":
        return seccomp.KILL
    if name == "SCMP_ACT_LOG":
        return seccomp.LOG
    raise SystemExit(f"run_with_seccomp: unsupported action {name}")


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1]) as f:
        profile = json.load(f)
    flt = seccomp.SyscallFilter(action(profile["defaultAction"], profile.get("defaultErrnoRet")))
    default = (profile["defaultAction"], profile.get("defaultErrnoRet", 1))
    loaded = 0
    for rule in profile.get("syscalls", []):
        if (rule["action"], rule.get("errnoRet", 1)) == default:
            continue  # what the default does anyway (libseccomp refuses such a rule)
        act = action(rule["action"], rule.get("errnoRet"))
        args = []
        for arg in rule.get("args") or []:
            args.append(seccomp.Arg(arg["index"], OPS[arg["op"]], arg["value"],
                                    arg.get("valueTwo", 0)))
        for name in rule["names"]:
            try:
                number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
            except (ValueError, RuntimeError):
                continue  # not a system call of this architecture
            if number < 0:
                continue  # a pseudo-syscall number: libseccomp's name for one this arch lacks
            flt.add_rule(act, name, *args)
            loaded += 1
    if loaded == 0:
        raise SystemExit("run_with_seccomp: the profile allows nothing")
    flt.load()
    os.execvp(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
