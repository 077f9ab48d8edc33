"""``python -m hf_posenc.cli``: the same as the ``hf-posenc`` command (used by ``accelerate launch -m``)."""

import sys

from .main import main

sys.exit(main())
