"""Fail unless every package in this Python environment is pinned, at this version, by the lock.

Each image's package list is resolved by pip with requirements/lock.txt as constraints; a
dependency the lock does not name would be resolved freely, and this check makes that a build
error. Usage: python check_lock.py LOCK_FILE
"""

import re
import sys
from importlib.metadata import distributions

EXEMPT = {"pip", "bevt"}  # the installer the venv module brings, and the project itself


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock_file: str) -> int:
    lock = {}
    with open(lock_file) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                name, _, version = line.partition("==")
                lock[canonical(name)] = version
    installed = {canonical(d.metadata["Name"]): (d.metadata["Name"], d.version) for d in distributions()}
    bad = sorted(
        f"{name}=={version}"
        for key, (name, version) in installed.items()
        if key not in EXEMPT and lock.get(key) != version
    )
    if bad:
        print(f"not pinned by {lock_file}: {', '.join(bad)}", file=sys.stderr)
        return 1
    print(f"{len(installed)} distributions, every one pinned by {lock_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
