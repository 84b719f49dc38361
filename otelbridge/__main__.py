from otelbridge.cli import main

raise SystemExit(main())
