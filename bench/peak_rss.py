"""Run one command as this process's only child and print one JSON line about it:

    {"rc", "wall_s", "max_rss_kib", "user_s", "sys_s", "stderr_tail"}

max_rss_kib is ru_maxrss of RUSAGE_CHILDREN: on Linux the peak resident set of the largest single
process among the waited-for descendants (the command itself, or one of its worker processes),
in KiB. Run it in a fresh process per measurement (python bench/peak_rss.py -- CMD ...), so that
nothing else is counted.
"""

import json
import resource
import subprocess
import sys
import time


def main(argv):
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: python bench/peak_rss.py -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"rc": proc.returncode, "wall_s": wall, "max_rss_kib": usage.ru_maxrss,
                      "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
                      "stderr_tail": proc.stderr[-3000:].decode(errors="replace") if proc.returncode else ""}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
