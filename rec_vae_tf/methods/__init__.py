"""The inference methods: one object per method family behind one interface, and the bounds they optimise."""
