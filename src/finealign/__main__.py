"""`python -m finealign ...`, the form torchrun launches: `torchrun --nproc_per_node 2 -m finealign train ...`."""

import sys

from finealign.cli.main import main

sys.exit(main())
