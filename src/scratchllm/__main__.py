from scratchllm.cli.main import main

raise SystemExit(main())
