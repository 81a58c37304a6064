"""Durability: the Postgres journal, snapshots and recovery; Redis for what nodes share."""
