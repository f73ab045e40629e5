"""Run the fault corpus (:mod:`corpus`) through the real CLI and check every case's outcome.

Each invocation runs ``python -m transfuse.cli`` in a subprocess, in its own folder, with a
timeout (no hang), under an address-space limit (``RLIMIT_AS``) and with its peak RSS read from
``wait4`` (bounded memory); every invocation is
checked for: its exit code, no traceback, every line on stderr a one-line message, no file of
the user's deleted or changed and no file written outside its output folder. Then each case
checks its own outcome. Invocations run two at a time (``TRANSFUSE_FAULT_WORKERS``), the ones a
case selected with ``-k`` needs only.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from corpus import CASES, DOC, INVOCATIONS, Case, Invocation, doc_with_table  # noqa: E402

BY_NAME = {inv.name: inv for inv in INVOCATIONS}


@dataclass
class Result:
    inv: Invocation
    folder: Path
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    cpu_seconds: float
    max_rss_mb: float
    timed_out: bool
    changed: list[str]  # user files deleted or changed, files written outside the outputs
    broken: str = ""  # why the invocation could not be set up (e.g. the run it needs failed)


def snapshot(root: Path) -> dict[str, str]:
    """Every path below ``root``: a file's sha256, a link's target, ``dir`` for a folder."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def differences(before: dict[str, str], after: dict[str, str], outputs: tuple[str, ...]) -> list[str]:
    def inside(rel: str) -> bool:
        return any(rel == o or rel.startswith(o.rstrip("/") + "/") for o in outputs)

    bad = [f"deleted: {p}" for p in before if p not in after and not inside(p)]
    bad += [f"changed: {p}" for p in before if p in after and after[p] != before[p] and not inside(p)]
    bad += [f"written outside the output: {p}" for p in after if p not in before and not inside(p)]
    return bad


def run_cli(argv: list[str], cwd: Path, env: dict[str, str], timeout: float, max_vm_mb: float) -> tuple:
    """``(rc, stdout, stderr, seconds, CPU seconds, peak RSS in MB, timed out)``; CPU and RSS from
    the child's rusage; the child runs under an address-space limit of ``max_vm_mb``."""
    import resource

    vm = int(max_vm_mb * 2**20)
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "transfuse.cli", *argv], cwd=cwd, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (vm, vm)))
    streams: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda k=k, s=s: streams.__setitem__(k, s.read()))
               for k, s in (("out", p.stdout), ("err", p.stderr))]
    for r in readers:
        r.start()
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        p.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    _, status, usage = os.wait4(p.pid, 0)
    timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    return (p.returncode, streams["out"].decode(errors="replace"), streams["err"].decode(errors="replace"),
            time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, killed.is_set())


def execute(inv: Invocation, root: Path) -> Result:
    folder = root / inv.name
    folder.mkdir()
    needed = {n: root / n for n in inv.needs}
    try:
        argv, extra = inv.build(folder, needed)
    except Exception as e:  # a needed run that failed: this invocation's cases fail, not all
        return Result(inv, folder, None, "", "", 0.0, 0.0, 0.0, False, [], f"{type(e).__name__}: {e}")
    watched = {"": folder, **{f"<{n}>": root / n for n in inv.needs}}
    before = {k: snapshot(v) for k, v in watched.items()}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200", **extra}
    rc, out, err, secs, cpu, rss, timed_out = run_cli(argv, folder, env, inv.timeout, inv.max_vm_mb)
    changed = differences(before[""], snapshot(folder), inv.outputs)
    for k, v in watched.items():
        if k:  # another invocation's folder (a run it reads): nothing may change there
            changed += [f"{k} {c}" for c in differences(before[k], snapshot(v), ())]
    return Result(inv, folder, rc, out, err, secs, cpu, rss, timed_out, changed)


def needed_invocations(names: set[str]) -> list[Invocation]:
    todo, seen = list(names), set()
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += BY_NAME[n].needs
    return [inv for inv in INVOCATIONS if inv.name in seen]  # corpus order: the long fits first


@pytest.fixture(scope="session")
def results(request, tmp_path_factory) -> dict[str, Result]:
    selected = {item.callspec.params["case"].run for item in request.session.items
                if getattr(item, "callspec", None) and isinstance(item.callspec.params.get("case"), Case)}
    pending = needed_invocations(selected)
    root = tmp_path_factory.mktemp("faults")
    done: dict[str, Result] = {}
    workers = int(os.environ.get("TRANSFUSE_FAULT_WORKERS", "2"))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        running: dict = {}
        while pending or running:
            for inv in [i for i in pending if all(n in done for n in i.needs)]:
                pending.remove(inv)
                running[ex.submit(execute, inv, root)] = inv
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                done[running.pop(f).name] = f.result()
    cpu = {n: round(r.cpu_seconds, 1) for n, r in sorted(done.items(), key=lambda kv: -kv[1].cpu_seconds)}
    print(f"\nfault corpus: {len(done)} invocations in {time.perf_counter() - t0:.1f} s wall, "
          f"{sum(cpu.values()):.1f} s CPU; CPU s per invocation: {json.dumps(cpu)}")
    return done


def _quarantined(res: Result) -> dict[str, str]:
    rep = json.loads((res.folder / "run" / "report.json").read_text())
    return {Path(q["path"]).name: q["reason"] for q in rep["quarantined"]}


def _matches(text: str, expect: str) -> bool:
    """``expect`` exactly, where each "..." stands for any text: a trailing one makes it a prefix,
    one at both ends a part, one in the middle a prefix and a suffix (an absolute path between)."""
    parts = expect.split("...")
    if len(parts) == 1:
        return text == expect
    if not text.startswith(parts[0]) or not text.endswith(parts[-1]):
        return False
    pos = len(parts[0])
    for part in parts[1:-1]:
        i = text.find(part, pos)
        if i < 0:
            return False
        pos = i + len(part)
    return len(text) - len(parts[-1]) >= pos


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case: Case, results: dict[str, Result]):
    res = results[case.run]
    inv = res.inv
    assert not res.broken, f"{case.run} could not be set up: {res.broken}"
    assert not res.timed_out, f"{case.run} hung: killed after {inv.timeout} s"
    assert "Traceback" not in res.stderr, f"{case.run} crashed:\n{res.stderr[-3000:]}"
    assert res.rc == inv.rc, f"{case.run} exited {res.rc}, expected {inv.rc}:\n{res.stderr[-2000:]}"
    assert res.max_rss_mb <= inv.max_rss_mb, f"{case.run} peaked at {res.max_rss_mb:.0f} MB RSS"
    assert not res.changed, f"{case.run} touched files it must not: {res.changed}"
    expect = case.expect.replace("{d}", str(res.folder))
    if case.outcome in ("error", "refused"):
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
        assert _matches(lines[0][len("error: "):], expect), f"{case.run}\n  got:  {lines[0]}\n  want: {expect}"
    elif case.outcome == "quarantined":
        got = _quarantined(res)
        assert case.item in got, f"{case.item} not quarantined; quarantined: {sorted(got)}"
        assert _matches(got[case.item], expect), f"got: {got[case.item]!r}"
    elif case.outcome == "record":
        header, *rows = res.stdout.splitlines()
        assert header == "input\tlabel\tconfidence"
        records = dict(line.split("\t", 1) for line in rows)
        assert records[case.item] == f"ERROR\t{expect}"
        answered = [v for v in records.values() if not v.startswith("ERROR")]
        classes = json.loads((res.folder.parent / inv.needs[0] / "run" / "report.json").read_text())["task"]["classes"]
        assert answered and all(v.split("\t")[0] in classes for v in answered), records
        assert res.stderr.strip().splitlines()[-1].startswith("warning: ") and "error records above" in res.stderr
    elif case.outcome == "warning":
        warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
        assert warnings == [expect], warnings
    elif case.outcome == "kept":
        if case.run == "fit_images":  # a symlink loop: no item, no quarantine entry, the run finished
            assert case.item not in _quarantined(res) and (res.folder / "run" / "report.json").is_file()
        elif case.run == "fit_audio":  # an odd but readable file: in the data (12 clips + 4 kept)
            rep = json.loads((res.folder / "run" / "report.json").read_text())
            assert case.item not in _quarantined(res) and len(_quarantined(res)) == 10
            assert rep["task"]["n_train"] + rep["task"]["n_test"] == 16
        else:  # the long text: used (truncated), so 40 + 1 rows in the split, 3 quarantined
            rep = json.loads((res.folder / "run" / "report.json").read_text())
            assert rep["task"]["n_train"] + rep["task"]["n_test"] == 41
            assert case.item not in _quarantined(res)
    elif case.outcome == "listed":
        import html

        rep = json.loads((res.folder / "run" / "report.json").read_text())
        listed = {Path(o["path"]).name: o["resolved"] for o in rep["outside_data_root"]}
        assert listed.get(case.item) == expect, listed
        assert case.item not in _quarantined(res)
        page = (res.folder / "run" / "report.html").read_text()
        assert "Inputs outside the data folder" in page and html.escape(expect) in page
        assert "read from outside the data folder" in res.stderr
    else:
        raise AssertionError(f"unknown outcome {case.outcome!r}")


def test_corpus_is_complete():
    """Every invocation is checked by a case; the issue's faults are all marked."""
    assert {c.run for c in CASES} == set(BY_NAME)
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)
    assert {c.outcome for c in CASES} <= {"error", "refused", "quarantined", "record", "warning", "kept", "listed"}


def test_reliability_doc_lists_every_case():
    """docs/reliability.md holds the corpus table as corpus.py generates it (regenerate it with
    ``python tests/faults/corpus.py``)."""
    doc = DOC.read_text()
    assert doc == doc_with_table(doc), "docs/reliability.md is out of date: run python tests/faults/corpus.py"
    assert all(f"| `{c.name}` |" in doc for c in CASES)
