"""Message definitions this package talks to but cannot depend on everywhere, and a builder for them."""
