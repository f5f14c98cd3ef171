"""Pure pricing domain: price book, rating, plans, billing cycles, invoices (no I/O but config files)."""
