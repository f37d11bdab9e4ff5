import sys

from ringex.cli import main

sys.exit(main())
