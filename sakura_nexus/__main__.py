import sys

from sakura_nexus.cli import main

sys.exit(main())
