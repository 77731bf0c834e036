import sys

from habitat_operator.cli import main

sys.exit(main())
