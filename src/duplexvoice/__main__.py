import sys

from duplexvoice.cli import main

sys.exit(main())
