import sys

from wattscope.cli import main

sys.exit(main())
