"""Probing: one HTTP probe -> one result; sliding windows of results per check and platform."""
