"""What the numbers were measured on. ``busy_share`` reads the CPUs' busy share between two
readings of /proc/stat; here the two readings are written by the test, so the share it must find
is known. ``describe`` is the record ``minift compare`` writes beside its results."""

import json
import math
import shutil
import subprocess

import pytest

from minift import machine as machine_module
from minift.machine import busy_share, describe, describe_markdown, rss_mb, source_line

# cpu user nice system idle iowait irq softirq steal (guest guest_nice: not summed, counted in user)
BEFORE = "cpu  100 0 50 800 50 0 0 0 7 7\ncpu0 1 2 3\n"


def _share(tmp_path, after: str) -> float:
    stat = tmp_path / "stat"
    stat.write_text(BEFORE)
    return busy_share(5.0, stat=str(stat), sleep=lambda seconds: stat.write_text(after))


def test_a_machine_busy_for_a_third_of_the_ticks_reads_one_third(tmp_path):
    # 300 more ticks: 60 user + 30 nice + 10 system busy, 200 idle
    assert _share(tmp_path, "cpu  160 30 60 1000 50 0 0 0 7 7\n") == pytest.approx(100 / 300)


def test_waiting_for_a_disk_counts_as_idle_and_irq_and_steal_as_busy(tmp_path):
    # 100 more ticks: 40 iowait (idle), 20 irq + 20 softirq + 20 steal (busy)
    after = "cpu  100 0 50 800 90 20 20 20 7 7\n"
    assert _share(tmp_path, after) == pytest.approx(0.6)


def test_a_quiet_machine_reads_zero_and_no_ticks_at_all_is_not_a_division_by_zero(tmp_path):
    assert _share(tmp_path, "cpu  100 0 50 900 50 0 0 0 7 7\n") == 0.0
    assert _share(tmp_path, BEFORE) == 0.0


@pytest.mark.parametrize("content", [None, "cpu  1 2 3\n", "cpu  a b c d e f g h\n"])
def test_a_missing_or_unreadable_stat_gives_nan(tmp_path, content):
    stat = tmp_path / "stat"
    if content is not None:
        stat.write_text(content)
    assert math.isnan(busy_share(0.0, stat=str(stat)))


def test_this_machines_share_is_a_fraction_or_nan():
    share = busy_share(0.05)
    assert math.isnan(share) or 0.0 <= share <= 1.0


def test_compare_records_the_machine_with_one_blas_thread_and_a_measured_peak():
    machine = describe(busy_seconds=0.05)
    assert machine["cpu"].startswith("CPU: ") and " cores" in machine["cpu"]
    assert ", 1 thread" in machine["blas"] and machine["matmul_peak_gflops_one_thread"] > 0
    busy = machine["busy_before"]
    assert busy is None or 0.0 <= busy <= 1.0
    assert machine["code"].startswith("code: ")
    json.dumps(machine, allow_nan=False)  # machine.json holds no NaN


def test_the_machine_sentence_names_every_field_and_says_what_is_missing():
    machine = {"cpu": "CPU: X, 2 cores", "blas": "BLAS (numpy's): openblas 0.3, kernel K, 1 thread",
               "matmul_peak_gflops_one_thread": 91.5, "busy_before": 0.034,
               "code": "code: commit abc, clean"}  # fmt: skip
    text = describe_markdown(machine)
    for part in ["CPU: X, 2 cores", "kernel K, 1 thread", "91.5 GFLOP/s", "CPUs 3 % busy", "abc"]:
        assert part in text, part
    assert "took" not in text
    assert describe_markdown({**machine, "wall_minutes": 49.6}).endswith("took 50 minutes.")
    assert "CPUs is unknown" in describe_markdown({**machine, "busy_before": None})
    assert describe_markdown({}) == "Machine: not recorded."
    assert "CPU: unknown" in describe_markdown({"code": "code: commit abc, clean"})


def test_peak_resident_memory_is_at_least_what_is_resident_now():
    now, peak = rss_mb("VmRSS"), rss_mb("VmHWM")
    assert peak > 0
    assert math.isnan(now) or 0 < now <= peak


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)  # fmt: skip


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_code_line_names_the_commit_and_a_change_to_minift_and_nothing_else(tmp_path):
    repo, plain = tmp_path / "repo", tmp_path / "plain"
    (repo / "minift").mkdir(parents=True)
    plain.mkdir()
    (repo / "minift" / "a.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "m")
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo,
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert source_line(repo) == f"code: commit {head}, clean"
    (repo / "minift" / "a.py").write_text("x = 2\n")
    assert source_line(repo).endswith("with uncommitted changes to minift/ or benchmarks/")
    # an installed copy inside a venv inside a checkout is not the checkout's code
    installed = repo / ".venv" / "site-packages"
    installed.mkdir(parents=True)
    assert source_line(installed).startswith("code: unknown (minift is installed in ")
    assert source_line(plain) == "code: unknown (not a git checkout)"


def test_a_measured_run_is_described_as_it_begins_and_timed_to_its_end(monkeypatch):
    clock = iter([100.0, 190.0])  # the run takes 90 s
    monkeypatch.setattr(machine_module, "describe", lambda busy_seconds: {"cpu": "CPU: x"})
    monkeypatch.setattr(machine_module.time, "perf_counter", lambda: next(clock))
    with machine_module.measured_run() as machine:
        assert machine == {"cpu": "CPU: x"}  # no minutes before the run ends
    assert machine == {"cpu": "CPU: x", "wall_minutes": 1.5}


def test_usable_cores_are_the_affinity_and_the_machines_count_where_there_is_none(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert machine_module.usable_cores() == 3
    assert machine_module.cpu_line().endswith(", 3 cores")
    monkeypatch.delattr("os.sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert machine_module.usable_cores() == 8
    monkeypatch.setattr("os.cpu_count", lambda: None)  # the platform cannot tell
    assert machine_module.usable_cores() == 1


@pytest.mark.parametrize("cores, workers", [({0}, 1), ({0, 1}, 2), ({0, 1, 2, 3}, 2)])
def test_the_demo_runs_as_many_workers_as_the_cores_it_may_use_up_to_two(
    monkeypatch, cores, workers
):
    from minift import cli

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: cores, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 64)  # the machine's count is not ours to use
    assert cli.build_parser().parse_args(["demo"]).workers == workers
