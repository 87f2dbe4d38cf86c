from edgeloader_publisher.cli import main

raise SystemExit(main())
