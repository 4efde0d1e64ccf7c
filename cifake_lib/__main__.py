"""`python -m cifake_lib ...` is the `cifake` command (used by `accelerate launch` and `torchrun`)."""

import sys

from cifake_lib.app.cli import main

sys.exit(main())
