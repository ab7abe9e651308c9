"""`python -m gateway [flags]`: the same as `agentmesh serve gateway [flags]`."""

import sys

from gateway.main import main

sys.exit(main(sys.argv[1:]))
