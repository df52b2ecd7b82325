import sys

from albert_gpt.cli import main

sys.exit(main())
