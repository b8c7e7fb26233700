"""`python -m torua_node` (what `torua node` runs)."""

from __future__ import annotations

from torua_node.main import main

if __name__ == "__main__":
    main()
