from agentmesh.cli import main

raise SystemExit(main())
