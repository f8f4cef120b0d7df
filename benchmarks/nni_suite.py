"""NNI 2.10's own compression tests, run unchanged against real NNI or against the purecompress shim.

Issue 12's measuring stick. Given a directory holding NNI's test tree (``test/algo/compression``
with its ``v1`` and ``v2`` test files, the ``assets`` helpers and ``test/ut`` for the models some v1
tests import), each ``test_*.py`` file runs with pytest in its own subprocess, from a fresh scratch
copy of the tree in a temporary directory, so nothing is written into DIR or the repository:

- ``--backend nni``: the installed NNI; a plugin patches ``torch.load`` to ``weights_only=False``
  (NNI's iterative pruners ``torch.load`` pickled models, which torch >= 2.6 refuses by default).
- ``--backend purecompress``: every ``import nni...`` is served by ``purecompress.compat``'s import
  shim (:func:`purecompress.compat._shim.install`, as ``python -m purecompress.compat`` does),
  installed by a plugin before collection; the purecompress imported is this checkout's.

Per file it prints passed / failed / error / skipped counts (plus the files that failed to collect
or ran past ``--timeout``), then totals; ``--compare`` runs both backends one after the other and
prints them side by side with the test ids that pass under NNI and do not pass under purecompress,
each with its first error line. Nothing is fetched; nothing is written outside temporary
directories except the optional ``--out FILE`` markdown. Without NNI's test files it says so and
exits 2.

Get the tree from a clone of microsoft/nni at tag v2.10 (tests are the same at v2.10.1)::

    git -C nni archive v2.10 test/algo/__init__.py test/algo/compression test/ut/__init__.py \\
        test/ut/sdk/__init__.py test/ut/sdk/models/pytorch_models | tar -x -C /tmp/nni-tests

NNI's MNIST helpers (``assets/simple_mnist``) read ``data/mnist`` relative to the working directory
and download it when absent: put MNIST's raw files in ``DIR/data/mnist/MNIST/raw/`` to run those
tests offline (a ``data/`` folder beside ``algo/`` is copied into every scratch copy), or pass
``--synthetic-mnist``: MNIST-format files (60,000 training and 2,000 test images of 28x28, the
counts NNI's Lightning data module splits) made from scikit-learn's bundled 8x8 digits, upscaled,
shifted and noised, so the tests that train and evaluate on MNIST run offline under both backends
(accuracies are not MNIST's; the tests check behaviour, not accuracy).

Run::

    python benchmarks/nni_suite.py --tests /tmp/nni-tests/test --compare --out /tmp/nni-suite.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("nni", "purecompress")
SUITES = ("v1", "v2")
OUTCOMES = ("passed", "failed", "error", "skipped")
PLUGIN = "_nni_suite_plugin"

# Loaded with ``-p`` before collection. Records every test's outcome as a JSON line as it happens
# (so a file killed by the timeout still reports the tests it finished) and which ``nni`` ran.
PLUGIN_SOURCE = '''
"""nni_suite's pytest plugin (generated into a temporary directory)."""
import json
import os
import sys

_BACKEND = os.environ["NNI_SUITE_BACKEND"]
_OUT = open(os.environ["NNI_SUITE_RESULTS"], "a", encoding="utf-8")

# NNI imports Lightning -> torchmetrics -> torchvision, whose CUDA wheel needs this on the CPU torch.
from benchmarks.zoo_import import install_import_hook

install_import_hook()

if _BACKEND == "purecompress":
    from purecompress.compat._shim import install

    install()
else:
    import torch

    _torch_load = torch.load

    def _load(*args, **kwargs):  # NNI's pickled models need this on torch >= 2.6
        kwargs.setdefault("weights_only", False)
        return _torch_load(*args, **kwargs)

    torch.load = _load


def _first_error_line(report):
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    if crash is not None and crash.message:
        return crash.message.strip().splitlines()[0]
    text = str(report.longrepr or "")
    for line in text.splitlines():
        if line.startswith("E "):
            return line[1:].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _write(record):
    _OUT.write(json.dumps(record) + "\\n")
    _OUT.flush()


def pytest_runtest_logreport(report):
    outcome = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "skipped" if report.skipped else "passed"  # xfailed / xpassed
    message = "" if outcome == "passed" else _first_error_line(report)
    _write({"kind": "test", "id": report.nodeid, "when": report.when, "outcome": outcome, "message": message})


def pytest_collectreport(report):
    if report.failed:
        _write({"kind": "collect", "id": report.nodeid, "outcome": "error", "message": _first_error_line(report)})


def pytest_sessionfinish(session, exitstatus):
    module = sys.modules.get("nni")
    _write({"kind": "session", "exitstatus": int(exitstatus),
            "nni": getattr(module, "__file__", None), "nni_version": getattr(module, "__version__", None)})
'''

PYTEST_INI = """[pytest]
filterwarnings =
    ignore:Using key to access the identifier of:DeprecationWarning
    ignore:The truth value of an empty array is ambiguous.:DeprecationWarning
"""


@dataclass
class FileResult:
    """One test file's outcomes: test id -> passed/failed/error/skipped, and how the run ended."""

    path: str
    tests: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    collect_error: str = ""
    timed_out: bool = False
    seconds: float = 0.0
    nni_module: str | None = None
    exit_status: int | None = None

    def count(self, outcome: str) -> int:
        """How many tests ended with ``outcome``."""
        return sum(1 for o in self.tests.values() if o == outcome)

    @property
    def note(self) -> str:
        """'timeout', 'collect error' or ''."""
        if self.timed_out:
            return "timeout"
        return "collect error" if self.collect_error else ""


def find_test_root(directory: Path) -> Path | None:
    """The directory holding ``algo/compression`` (NNI's ``test/``), given it, its parent or the tree."""
    for candidate in (directory, directory / "test", directory.parent.parent):
        if (candidate / "algo" / "compression" / "v2").is_dir() or (candidate / "algo" / "compression" / "v1").is_dir():
            return candidate
    return None


def find_test_files(root: Path, suites: Sequence[str]) -> list[str]:
    """The test files of the suites, as paths relative to ``root`` (``algo/compression/v2/test_x.py``)."""
    files = []
    for suite in suites:
        found = (root / "algo" / "compression" / suite).glob("test_*.py")
        files += sorted(p.relative_to(root).as_posix() for p in found)
    return files


def write_synthetic_mnist(raw: Path, *, train: int = 60_000, test: int = 2_000, seed: int = 0) -> None:
    """MNIST's four raw IDX files in ``raw`` (``MNIST/raw``), from scikit-learn's bundled digits.

    Each image is a digit upscaled from 8x8 to 20x20, placed at a random offset in a 28x28 frame
    (MNIST's layout) with a little noise, as uint8 0-255; labels are the digits' own.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)  # [1797, 1, 8, 8] in 0-1
    big = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False).squeeze(1)
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("t10k", test)):
        pick = rng.integers(0, len(big), count)
        frames = np.zeros((count, 28, 28), dtype=np.float32)
        dy, dx = rng.integers(0, 9, count), rng.integers(0, 9, count)
        for i, (k, y, x) in enumerate(zip(pick, dy, dx)):
            frames[i, y:y + 20, x:x + 20] = big[k].numpy()
        frames = np.clip(frames + rng.normal(0.0, 0.05, frames.shape), 0.0, 1.0)
        pixels = (frames * 255).astype(np.uint8)
        labels = digits.target[pick].astype(np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            np.array([0x0803, count, 28, 28], dtype=">i4").tobytes() + pixels.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(np.array([0x0801, count], dtype=">i4").tobytes()
                                                         + labels.tobytes())


def _copy_tree(root: Path, dest: Path, data: Path | None = None) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "data", "lightning_logs", "junit")
    dest.mkdir(parents=True)
    shutil.copytree(root / "algo" / "compression", dest / "algo" / "compression", ignore=ignore)
    if (root / "algo" / "__init__.py").is_file():
        shutil.copy2(root / "algo" / "__init__.py", dest / "algo" / "__init__.py")
    if (root / "ut").is_dir():
        shutil.copytree(root / "ut", dest / "ut", ignore=ignore)
    if (root / "data").is_dir():  # NNI's MNIST helpers read ./data/mnist (and download it when absent)
        shutil.copytree(root / "data", dest / "data")
    if data is not None:  # --synthetic-mnist: linked, not copied (60,000 images per scratch copy)
        (dest / "data").mkdir(exist_ok=True)
        (dest / "data" / "mnist").symlink_to(data / "mnist", target_is_directory=True)
    (dest / "pytest.ini").write_text(PYTEST_INI)  # NNI's own adds --cov options (pytest-cov)


def _parse(result: FileResult, lines: Iterable[str]) -> None:
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["kind"] == "session":
            result.nni_module, result.exit_status = record["nni"], record["exitstatus"]
        elif record["kind"] == "collect":
            result.collect_error = result.collect_error or record["message"]
        else:
            test_id, outcome, when = record["id"], record["outcome"], record["when"]
            if outcome == "failed" and when != "call":
                outcome = "error"
            previous = result.tests.get(test_id)
            if previous in (None, "passed") or (previous == "skipped" and outcome in ("failed", "error")):
                result.tests[test_id] = outcome
                if outcome != "passed":
                    result.messages[test_id] = record["message"]


def run_file(root: Path, rel: str, backend: str, timeout: float, python: str, threads: int,
             extra_paths: Sequence[str] = (), data: Path | None = None) -> FileResult:
    """Run one test file under ``backend`` in a fresh scratch copy of the tree; return its outcomes."""
    result = FileResult(rel)
    with tempfile.TemporaryDirectory(prefix="nni-suite-") as tmp:
        work, plugin_dir = Path(tmp) / "test", Path(tmp) / "plugin"
        _copy_tree(root, work, data)
        plugin_dir.mkdir()
        (plugin_dir / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
        results = Path(tmp) / "results.jsonl"
        paths = [str(plugin_dir), *extra_paths, str(REPO)]  # REPO: benchmarks.zoo_import (and, shimmed, purecompress)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(paths),
            "NNI_SUITE_BACKEND": backend,
            "NNI_SUITE_RESULTS": str(results),
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": tmp,  # NNI and lightning write under ~
            "TMPDIR": tmp,
            **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}),
        }
        cmd = [python, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "-q", "-rA", "--rootdir", str(work),
               "-c", str(work / "pytest.ini"), rel]
        start = time.monotonic()
        try:
            subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=timeout, check=False, start_new_session=True)
        except subprocess.TimeoutExpired:
            result.timed_out = True
        result.seconds = time.monotonic() - start
        if results.is_file():
            _parse(result, results.read_text(encoding="utf-8").splitlines())
    return result


def run_backend(root: Path, files: Sequence[str], backend: str, timeout: float, python: str,
                threads: int, extra_paths: Sequence[str] = (), data: Path | None = None) -> dict[str, FileResult]:
    """Run every file under one backend, one after another, printing progress to stderr."""
    out = {}
    for rel in files:
        res = run_file(root, rel, backend, timeout, python, threads, extra_paths, data)
        out[rel] = res
        print(f"[{backend}] {rel}: {res.count('passed')}/{len(res.tests)} passed in {res.seconds:.0f}s"
              f"{' (' + res.note + ')' if res.note else ''}", file=sys.stderr, flush=True)
    return out


def _short(rel: str) -> str:
    return rel.removeprefix("algo/compression/")


def table(runs: dict[str, dict[str, FileResult]], files: Sequence[str]) -> str:
    """A markdown table: per file, the test count and each backend's passed/failed/error/skipped.

    A test one backend ran and another never reached (its file failed to collect or timed out) is an
    error for the latter (:func:`fill_missing`), so every backend's row sums to the same test count.
    """
    header = ["file", "tests"] + [f"{b} {o}" for b in runs for o in ("passed", "failed", "error", "skipped")]
    header += ["notes"]
    rows = [header, ["---"] * len(header)]
    totals = [0] * (len(header) - 2)
    for rel in files:
        count = max(len(r[rel].tests) for r in runs.values())
        cells = [count] + [r[rel].count(o) for r in runs.values() for o in OUTCOMES]
        totals = [t + c for t, c in zip(totals, cells)]
        notes = "; ".join(f"{b}: {r[rel].note}" for b, r in runs.items() if r[rel].note)
        rows.append([_short(rel)] + [str(c) for c in cells] + [notes])
    rows.append(["**total**"] + [f"**{t}**" for t in totals] + [""])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def fill_missing(runs: dict[str, dict[str, FileResult]]) -> None:
    """Count a test another backend ran but this one never reached (collect error, timeout) as an error."""
    for rel in next(iter(runs.values())):
        ids = {test_id for r in runs.values() for test_id in r[rel].tests}
        for res in (r[rel] for r in runs.values()):
            for test_id in sorted(ids - res.tests.keys()):
                res.tests[test_id] = "error"
                res.messages[test_id] = f"[{res.note or 'not run'}] {res.collect_error}".strip()


def regressions(nni: dict[str, FileResult], pc: dict[str, FileResult]) -> list[tuple[str, str, str]]:
    """(test id, purecompress outcome, its first error line) for each test passing under NNI only."""
    out = []
    for rel, res in nni.items():
        other = pc[rel]
        for test_id, outcome in res.tests.items():
            if outcome != "passed" or other.tests.get(test_id) == "passed":
                continue
            out.append((test_id, other.tests.get(test_id, "not run"), other.messages.get(test_id, "")))
    return out


def collect_errors(runs: dict[str, dict[str, FileResult]]) -> str:
    """One line per file that failed to collect under a backend, with its first error line."""
    lines = [f"- {b} {_short(rel)}: {res.collect_error}" for b, r in runs.items() for rel, res in r.items()
             if res.collect_error]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the backends, print (and optionally write) the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=Path, required=True,
                        help="NNI's test/ directory (holding algo/compression), or a checkout holding test/")
    parser.add_argument("--backend", choices=BACKENDS, default="purecompress")
    parser.add_argument("--compare", action="store_true", help="run both backends (NNI first) side by side")
    parser.add_argument("--suite", choices=SUITES, action="append", help="v1 and/or v2 (default both)")
    parser.add_argument("-k", "--only", action="append", default=[],
                        help="run only files whose name contains this (repeatable)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test file (default 900)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads per run (0: leave unset)")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs pytest")
    parser.add_argument("--pythonpath", action="append", default=[],
                        help="extra directory on the tests' PYTHONPATH, both backends (e.g. torchvision installed "
                             "with pip --target); repeatable")
    parser.add_argument("--failures", action="store_true",
                        help="also list every test that did not pass, per backend, with its first error line")
    parser.add_argument("--out", type=Path, help="also write the tables as markdown to this file")
    parser.add_argument("--synthetic-mnist", action="store_true",
                        help="give the tests MNIST-format files made from scikit-learn's digits (offline)")
    args = parser.parse_args(argv)

    root = find_test_root(args.tests)
    if root is None:
        print(f"error: no NNI test tree under {args.tests} (expected algo/compression/v1 and v2 there or under "
              f"test/); this script fetches nothing: get NNI 2.10's test/ directory first", file=sys.stderr)
        return 2
    files = [f for f in find_test_files(root, args.suite or SUITES) if not args.only or any(k in f for k in args.only)]
    if not files:
        print(f"error: no test_*.py files under {root / 'algo' / 'compression'}", file=sys.stderr)
        return 2

    backends = BACKENDS if args.compare else (args.backend,)
    extra = [str(Path(p).resolve()) for p in args.pythonpath]
    with tempfile.TemporaryDirectory(prefix="nni-suite-data-") as synthetic:
        data = None
        if args.synthetic_mnist:
            data = Path(synthetic)
            write_synthetic_mnist(data / "mnist" / "MNIST" / "raw")
        runs = {b: run_backend(root, files, b, args.timeout, args.python, args.threads, extra, data) for b in backends}
    fill_missing(runs)
    for backend, res in runs.items():
        served = {r.nni_module for r in res.values() if r.nni_module}
        print(f"{backend}: nni served from {', '.join(sorted(served)) or '(never imported)'}", file=sys.stderr)

    parts = [f"NNI test tree: {root}; python {sys.version.split()[0]}; per-file timeout {args.timeout:.0f}s"
             + ("; synthetic MNIST (scikit-learn digits)" if args.synthetic_mnist else "")
             + (f"; extra PYTHONPATH {os.pathsep.join(extra)}" if extra else ""), "",
             table(runs, files)]
    errors = collect_errors(runs)
    if errors:
        parts += ["", "Files that failed to collect:", errors]
    if args.compare:
        regress = regressions(runs["nni"], runs["purecompress"])
        parts += ["", f"Passing under NNI, not under purecompress ({len(regress)}):"]
        parts += [f"- {test_id} [{outcome}]: {textwrap.shorten(msg, 240)}" for test_id, outcome, msg in regress]
    if args.failures:
        for backend, res in runs.items():
            parts += ["", f"Not passing under {backend}:"]
            parts += [f"- {test_id} [{outcome}]: {textwrap.shorten(r.messages.get(test_id, ''), 240)}"
                      for r in res.values() for test_id, outcome in r.tests.items() if outcome != "passed"]
    text = "\n".join(parts)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
