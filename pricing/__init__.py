"""Pure pricing domain: price book, rating, plans, billing cycles, invoices (no I/O but config files).

The rules are written down in README.md next to this file. The names below are the public API;
each module documents its own.
"""

from meterline.pricing.catalogue import Catalogue, default_catalogue, load_catalogue
from meterline.pricing.cycles import BillingSchedule, Cycle, parse_instant
from meterline.pricing.exceptions import ConfigError, ConfigProblem, InvalidUsageError, PricingError, UnknownModelError, UnknownPlanError
from meterline.pricing.invoice import CarriedCredits, Grant, Invoice, InvoiceLine, compute_invoice
from meterline.pricing.margin import CreditMargin, call_margin, check_margins, credit_margin
from meterline.pricing.plans import CreditRules, Plan, PlanFile
from meterline.pricing.price_book import ModelPrice, PriceBook, load_price_book
from meterline.pricing.proration import CycleTerms, prorate_change
from meterline.pricing.rating import Rater, Rating, default_rater

__all__ = [
    "BillingSchedule", "CarriedCredits", "Catalogue", "ConfigError", "ConfigProblem", "CreditMargin", "CreditRules",
    "Cycle", "CycleTerms", "Grant", "InvalidUsageError", "Invoice", "InvoiceLine", "ModelPrice", "Plan", "PlanFile",
    "PriceBook", "PricingError", "Rater", "Rating", "UnknownModelError", "UnknownPlanError", "call_margin",
    "check_margins", "compute_invoice", "credit_margin", "default_catalogue", "default_rater", "load_catalogue",
    "load_price_book", "parse_instant", "prorate_change",
]
