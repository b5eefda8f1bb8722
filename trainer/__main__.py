"""`python -m trainer ...` is `python -m trainer.train ...` (the torchrun entry point)."""

import sys

from trainer.train import main

sys.exit(main())
