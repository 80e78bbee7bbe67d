#!/usr/bin/env python3
"""Parse-only YAML (`check_yaml`) against today's parser (`parse_yaml`): same verdict on every file?

  python3 bench/yaml_parity.py                          # the repository, site-packages, hostile cases
  python3 bench/yaml_parity.py /usr/lib/google-cloud-sdk --max-bytes 1048576

Every .yaml/.yml/.json file under the dirs given (UTF-8, at most --max-bytes, the sidecar's default
RELOAD_MAX_FILE_BYTES) goes through both; a different verdict (accepted vs refused, or another problem,
line or column) is listed and the exit status is 1. Prints how many files took the parser-only path and
the ms per MiB of each function over the whole corpus.
"""

from __future__ import annotations

import argparse
import site
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.parsers import _needs_building, check_yaml, parse_yaml  # noqa: E402
from tests.test_parsers_parity import hostile, mutants, outcome  # noqa: E402


def corpus(dirs: list[Path], max_bytes: int) -> Iterator[tuple[str, str]]:
    for root in dirs:
        for path in sorted(root.rglob("*")):
            if path.suffix not in (".yaml", ".yml", ".json") or not path.is_file():
                continue
            try:
                if path.stat().st_size > max_bytes:
                    continue
                yield str(path), path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", type=Path)
    ap.add_argument("--max-bytes", type=int, default=1 << 20)
    args = ap.parse_args()
    dirs = args.dirs or [ROOT, *map(Path, site.getsitepackages())]
    cases = [*hostile(), *mutants(5000), *corpus(dirs, args.max_bytes)]
    spent = {"parse_yaml": 0.0, "check_yaml": 0.0}
    differ, fast, refused, size = [], 0, 0, 0
    for label, text in cases:
        size += len(text.encode())
        t0 = time.perf_counter()
        before = outcome(parse_yaml, text)
        t1 = time.perf_counter()
        after = outcome(check_yaml, text)
        t2 = time.perf_counter()
        spent["parse_yaml"] += t1 - t0
        spent["check_yaml"] += t2 - t1
        fast += not _needs_building(text)
        refused += before[0] != "ok"
        if before != after:
            differ.append(f"{label}: parse_yaml {before} != check_yaml {after}")
    mib = size / 2**20
    print(f"{len(cases)} texts, {mib:.1f} MiB, {refused} refused; {fast} took the parser-only path")
    for name, seconds in spent.items():
        print(f"  {name}: {seconds:.2f} s, {seconds * 1000 / mib:.1f} ms/MiB")
    for line in differ:
        print("DIFFERENT", line[:300])
    print(f"{len(differ)} disagreements")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
