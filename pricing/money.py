"""Exact arithmetic for money and credits: a Decimal context that raises where it would round.

Python's default context keeps 28 significant digits and rounds past them without a word; a
balance of 10^11 credits with 18 decimals is already 29. This one keeps 76, the precision of the
warehouse's Decimal(76, 18) columns, and traps Inexact: with the bounds on events and price
books (schemas/usage.py, price_book.py, plans.py) no sum of accepted events comes near, and if one
ever did it would fail loudly, never round.
"""

from __future__ import annotations

from decimal import Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow

EXACT = Context(prec=76, traps=[Inexact, Overflow, InvalidOperation, DivisionByZero])
THOUSAND = Decimal(1000)
# Config values (prices per 1,000 tokens, credits per 1,000 tokens): at most this many decimals, so
# an event's cost and credits keep at most 15 and fit the warehouse's 18.
CONFIG_DECIMAL_PLACES = 12
