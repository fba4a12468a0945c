"""Invoice-ready notices: the notice of a finalized invoice (compose, pure), and the sending (role)."""
