"""Alerting: incidents (pending, firing, resolved), their wording, and delivery to Slack."""
