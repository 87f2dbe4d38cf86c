from edgeloader.cli import main

raise SystemExit(main())
