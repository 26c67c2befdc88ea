#!/usr/bin/env python3
"""Where a profiled process's time goes, by thread and by system call.

Reads a `perf record -g` file (perf/daemon.sh PROFILE=1 writes one) through `perf script` and
puts every sample in one bucket: user code, the system call it was taken in (the outermost
`__x64_sys_*` / `__do_sys_*` frame of its kernel stack; `do_writev` counts as writev, whose
entry is inlined), an interrupt or page fault, or other kernel work. Kernel stacks are whole
even when the user-space part is not (release builds keep no frame pointers), so this tells
what each thread pays the kernel for even where `perf report`'s call graphs cannot.

Usage: python3 perf/profile_by_syscall.py PERF_DATA [MESSAGES]
With MESSAGES, each row also gives µs per message (the samples' share of the profile's
CPU time, which perf records at its sampling period, divided by MESSAGES).
"""
import collections
import re
import subprocess
import sys

ENTRY = re.compile(r"^(__x64_sys_|__do_sys_|__se_sys_)(\w+)$")
OTHER = {
    "do_writev": "writev",
    "asm_sysvec_reschedule_ipi": "(reschedule IPI)",
    "asm_sysvec_apic_timer_interrupt": "(timer interrupt)",
    "asm_common_interrupt": "(device interrupt)",
    "asm_exc_page_fault": "(page fault)",
}


def bucket(stack):
    """stack: [(symbol, is_kernel)], innermost first."""
    if not stack or not stack[0][1]:
        return "user"
    for sym, kernel in stack:
        if not kernel:
            break
        m = ENTRY.match(sym)
        if m:
            return m.group(2)
        if sym in OTHER:
            return OTHER[sym]
    return "(other kernel)"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    data = sys.argv[1]
    msgs = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    try:
        run = subprocess.run(["perf", "script", "-i", data, "-F", "comm,period,ip,sym"],
                             capture_output=True, text=True)
    except FileNotFoundError:
        sys.exit("profile_by_syscall.py: perf not found (Debian: linux-perf)")
    if run.returncode != 0:
        sys.exit(f"profile_by_syscall.py: perf script cannot read {data}: {run.stderr.strip()[:300]}")
    script = run.stdout
    by = collections.Counter()
    total = 0
    comm, period, stack = None, 0, []

    def flush():
        nonlocal total
        if comm is not None:
            by[(comm, bucket(stack))] += period
            total += period

    for line in script.splitlines():
        if not line.strip():
            flush()
            comm, period, stack = None, 0, []
            continue
        if not line.startswith((" ", "\t")):
            # "comm period" (comm may contain spaces; the period is the last field)
            head = line.split()
            comm, period = " ".join(head[:-1]), int(head[-1])
            continue
        parts = line.split(None, 1)
        sym = re.sub(r"\+0x[0-9a-f]+$", "", parts[1].strip() if len(parts) > 1 else "")
        stack.append((sym, parts[0].startswith("ffffffff")))
    flush()
    if not total:
        sys.exit("no samples")
    per_thread = collections.Counter()
    for (c, _), n in by.items():
        per_thread[c] += n
    def row(n, indent, name):
        # the period is in ns: n / 1e3 is µs
        us = f"{n / 1e3 / msgs:7.1f}" if msgs else " " * 7
        print(f"{100 * n / total:5.1f}%  {us}  {indent}{name}")

    print(f"{'share':>6}  {'µs/msg':>7}  thread / where")
    rows = by.most_common()
    for c, n in per_thread.most_common():
        row(n, "", c)
        for (c2, b), m in rows:
            if c2 == c and m / total >= 0.003:
                row(m, "  ", b)


if __name__ == "__main__":
    main()
