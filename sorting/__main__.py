from sorting.cli import main

raise SystemExit(main())
