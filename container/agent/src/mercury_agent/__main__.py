"""`python -m mercury_agent`."""

import sys

from mercury_agent.main import main

if __name__ == "__main__":
    sys.exit(main())
