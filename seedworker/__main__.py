import sys

from seedworker.tools.cli import main

sys.exit(main())
