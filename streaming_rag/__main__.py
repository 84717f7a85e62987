"""`python -m streaming_rag`: the `streaming-rag` command line."""

import sys

from .cli import main

sys.exit(main())
