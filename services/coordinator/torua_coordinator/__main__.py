"""`python -m torua_coordinator` (what `torua coordinator` runs)."""

from __future__ import annotations

from torua_coordinator.main import main

if __name__ == "__main__":
    main()
