"""`python -m streaming_rag_cli`: the `streaming-rag` command line."""

import sys

from . import main

sys.exit(main())
