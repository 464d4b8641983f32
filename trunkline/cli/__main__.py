import sys

from trunkline.cli.main import main

sys.exit(main())
