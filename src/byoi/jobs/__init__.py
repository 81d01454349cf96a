"""The background-work seam: a reconciler that claims rows in transitional states by lease."""
