from snapd.cli.main import main

raise SystemExit(main())
