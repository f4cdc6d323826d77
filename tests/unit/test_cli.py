"""The `bevt` command line: every stage listed, only the invoked stage imported."""

from __future__ import annotations

import subprocess
import sys

from bevt_core.cli import COMMANDS
from tests.conftest import bevt_cli


def test_top_level_help_lists_every_stage_without_importing_torch():
    code = (
        "import sys; from bevt_core.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'bevt --help imported torch'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for cmd in COMMANDS:
        assert cmd.name in proc.stdout


def test_unknown_stage_is_a_usage_error():
    proc = subprocess.run(bevt_cli() + ["shardd"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
