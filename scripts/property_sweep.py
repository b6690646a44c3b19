"""The property-based tests with many more examples than the test suite runs.

    python scripts/property_sweep.py            # 500 random configurations per property
    python scripts/property_sweep.py --examples 2000
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=500)
    args = parser.parse_args()
    env = {**os.environ, "LUCID_TVM_EXAMPLES": str(args.examples)}
    root = Path(__file__).resolve().parent.parent
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "tests/test_properties.py"], cwd=root, env=env))


if __name__ == "__main__":
    main()
