from sslab.cli import main

raise SystemExit(main())
