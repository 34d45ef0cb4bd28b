from peerserve.cli import main

raise SystemExit(main())
