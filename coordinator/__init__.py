"""The coordinator side: federation state, rounds over Flower strategies, ledger."""
