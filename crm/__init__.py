"""Customers, vehicles, members, coupons, consent, rules, audit (SQLAlchemy)."""
