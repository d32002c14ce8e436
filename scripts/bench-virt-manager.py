#!/usr/bin/env python3
"""Measures virt-manager (the Debian package) the way the desktop benchmark
measures vmdesk: time from spawn to the main window and to its VM list
holding N machines, and the memory of its processes once settled.

The N machines are domains of a libvirt *test driver* file (test:///FILE),
half running and half shut off, so no daemon or real VM is needed. Each run
gets a fresh HOME and in-memory GSettings (no remembered connections), a
private session bus (dbus-run-session) and the caller's X display.

"Listed" is the later of: the window is mapped (xdotool), and virt-manager's
debug log has announced the Nth domain as added (each stderr line is stamped
by this script as it arrives). virt-manager shows its manager window only
after the connection is active, which is after it has added every domain.

Usage: bench-virt-manager.py --display :99 [--vms 1000] [--runs 3] [--json]
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TITLE = "Virtual Machine Manager"
ADDED = re.compile(r"domain=\S+ status=\S+ added")


def write_node(path, n):
    """A test-driver node with n domains; the odd ones shut off."""
    with open(path, "w") as f:
        f.write("<node>\n  <cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores>"
                "<threads>1</threads><active>2</active><mhz>2000</mhz></cpu>\n"
                "  <memory>16777216</memory>\n")
        for i in range(1, n + 1):
            off = "<test:runstate>5</test:runstate>" if i % 2 == 0 else ""
            f.write("  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
                    f"{off}<name>vm-{i:04d}</name><memory>524288</memory><vcpu>1</vcpu>"
                    "<os><type>hvm</type></os></domain>\n")
        f.write("</node>\n")


def tree(pid):
    """pid and every process under it."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def memory(pids):
    """(RSS, PSS) in KiB summed over pids."""
    rss = pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def window_visible(env):
    r = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", TITLE],
                       env=env, capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() != ""


def virt_manager_pid(root):
    """The virt-manager (python) process under dbus-run-session."""
    for p in tree(root):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if b"virt-manager" in f.read() and p != root:
                    return p
        except OSError:
            pass
    return None


def run_once(uri, n, display, timeout=120):
    home = tempfile.mkdtemp(prefix="vmm-home-")
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=f"{home}/.config",
               XDG_CACHE_HOME=f"{home}/.cache", XDG_DATA_HOME=f"{home}/.local/share",
               GSETTINGS_BACKEND="memory", DISPLAY=display)
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    # The previous run's window must be gone, or it would be taken for this one's.
    deadline = time.monotonic() + 15
    while window_visible(env):
        if time.monotonic() > deadline:
            raise RuntimeError("a virt-manager window is already open on this display")
        time.sleep(0.1)
    start = time.monotonic()
    proc = subprocess.Popen(["dbus-run-session", "--", "virt-manager", "--no-fork", "--debug",
                             "--connect", uri], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    added = {"count": 0, "at": None}

    def read_log():
        for line in proc.stderr:
            if ADDED.search(line):
                added["count"] += 1
                if added["count"] == n:
                    added["at"] = time.monotonic()

    threading.Thread(target=read_log, daemon=True).start()
    window_at = None
    try:
        while time.monotonic() - start < timeout:
            if window_at is None and window_visible(env):
                window_at = time.monotonic()
            if window_at is not None and added["at"] is not None:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"virt-manager exited with {proc.returncode}")
            time.sleep(0.02)
        else:
            raise RuntimeError(f"timeout: window={window_at}, domains added={added['count']}")
        listed_at = max(window_at, added["at"])
        time.sleep(3)
        vmm = virt_manager_pid(proc.pid) or proc.pid
        rss, pss = memory(tree(vmm))
        return {"window_ms": round((window_at - start) * 1000),
                "listed_ms": round((listed_at - start) * 1000),
                "rss_kib": rss, "pss_kib": pss}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(["rm", "-rf", home])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--display", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmm-node-") as d:
        node = os.path.join(d, "node.xml")
        write_node(node, a.vms)
        uri = f"test://{node}"
        run_once(uri, a.vms, a.display)  # warms the page cache, not counted
        runs = [run_once(uri, a.vms, a.display) for _ in range(a.runs)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    if a.json:
        print(json.dumps({**med, "runs": runs}))
    else:
        for i, r in enumerate(runs, 1):
            print(f"run {i}: window {r['window_ms']} ms, listed {r['listed_ms']} ms, "
                  f"RSS {r['rss_kib'] // 1024} MiB, PSS {r['pss_kib'] // 1024} MiB")
        print(f"median: {med}")


if __name__ == "__main__":
    sys.exit(main())
