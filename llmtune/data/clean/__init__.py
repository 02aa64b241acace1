"""Cleaning data for training: language identification, rule filters, exact and near deduplication, a report."""
