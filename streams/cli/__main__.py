"""``python -m streams.cli COMMAND``: the runtime commands, without the workbench."""

import sys

from streams.cli.main import main

sys.exit(main())
