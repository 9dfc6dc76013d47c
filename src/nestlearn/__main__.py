import sys

from nestlearn.cli import main

sys.exit(main())
