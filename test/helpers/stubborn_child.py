"""A child process for the runner tests, configured through its environment.

STUBBORN_IGNORE=INT,TERM ignores those signals; STUBBORN_EXIT_AFTER=S exits after S seconds
with code STUBBORN_CODE. It prints a few lines first, and echoes its arguments (the runner's
``--ros-args ...``), so tests can check the tail the runner reports.
"""
import os
import signal
import sys
import time

ignore = os.environ.get("STUBBORN_IGNORE", "")
exit_after = float(os.environ.get("STUBBORN_EXIT_AFTER", "inf"))
for name in filter(None, ignore.split(",")):
    signal.signal(getattr(signal, f"SIG{name}"), signal.SIG_IGN)
print(f"ready, ignoring {ignore or 'nothing'}; argv {sys.argv[1:]}", flush=True)
for line in range(40):
    print(f"line {line}", flush=True)
started = time.monotonic()
try:
    while time.monotonic() - started < exit_after:
        time.sleep(0.05)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(0)
print("giving up", flush=True)
sys.exit(int(os.environ.get("STUBBORN_CODE", "0")))
