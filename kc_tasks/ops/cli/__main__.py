"""`python -m kc_tasks.ops.cli`: the `kc-tasks` command (kc_tasks/ops/dev.py runs migrate so)."""

import sys

from kc_tasks.ops.cli import main

if __name__ == "__main__":
    sys.exit(main())
