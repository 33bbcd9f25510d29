import sys

from fastmixer.cli import main

sys.exit(main())
