"""A longer schemathesis run against the API than the test suite's.

``tests/integration/test_api_contract.py`` generates a few dozen requests per
operation so CI stays fast; this runs the same test with many more (default
500 per operation) on a throwaway Postgres database and Redis queue (the test
suite's fixtures), and prints how many operations kept the contract.

Usage (from the repository root, Postgres and Redis running)::

    .venv/bin/python benchmarks/api_fuzz.py                 # 500 examples per operation
    .venv/bin/python benchmarks/api_fuzz.py --examples 2000
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500,
                        help="generated requests per API operation")
    args = parser.parse_args(argv)
    env = {**os.environ, "MIXLAB_CONTRACT_EXAMPLES": str(args.examples)}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/integration/test_api_contract.py", "-q",
         "-p", "no:cacheprovider", "-rf"], cwd=ROOT, env=env, check=False)
    print(f"RESULT api_fuzz: {args.examples} examples per operation, exit {result.returncode}, "
          f"{time.monotonic() - started:.0f} s")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
