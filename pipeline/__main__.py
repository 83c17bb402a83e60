import sys

from pipeline.engine.cli import main

sys.exit(main())
