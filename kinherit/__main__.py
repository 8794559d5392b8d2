"""`python -m kinherit` (used by torchrun and accelerate launch)."""

from kinherit.cli import main

raise SystemExit(main())
