"""What the test run does with the optional extras.

A test that needs an optional package (the bible extra, the real MiniLM model, the reference
libraries) skips, with the command that installs it as the reason, through ``helpers.require``.
CI uses two switches, set in its environment only:

MINIFT_SKIPPED_LOG=FILE   append the node id and reason of every skipped test to FILE, so that
                          CI can run exactly those again once it has installed the extras
MINIFT_REQUIRE=a,b        the extras named are installed: a test that would skip for one of
                          them fails instead, so a broken install cannot pass as a skip
MINIFT_SLOW_LOG=FILE      append the node id and seconds of every test that ran longer than
                          SLOW_SECONDS, so that CI shows what the notebooks took on its machine
                          (read, never asserted: speed is measured in benchmarks/)
"""

import os

SLOW_SECONDS = 20.0


def pytest_runtest_logreport(report):
    slow = os.environ.get("MINIFT_SLOW_LOG")
    if slow and report.when == "call" and report.duration > SLOW_SECONDS:
        with open(slow, "a", encoding="utf-8") as f:
            f.write(f"{report.nodeid}\t{report.duration:.0f} s\n")
    log = os.environ.get("MINIFT_SKIPPED_LOG")
    if log and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{report.nodeid}\t{reason}\n")
