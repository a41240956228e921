"""Peak-memory measurement shared by the benchmarks (Linux /proc)."""
import gc


def rss_kib(field):
    """A field of /proc/self/status in KiB ("VmRSS", "VmHWM")."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(fn):
    """(result, added peak RSS in MiB) for one call of fn."""
    gc.collect()
    before = rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                     # reset VmHWM to the current RSS
    result = fn()
    peak = rss_kib("VmHWM")
    return result, (peak - before) / 1024.0


def child_peak_mib(script, argv):
    """Run ``script argv`` in a fresh interpreter (so earlier allocations do not hide
    its peak) and return the number it prints last: its measure_memory MiB."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True,
                         check=True).stdout
    return float(out.strip().splitlines()[-1])
