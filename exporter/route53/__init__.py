"""Route53: weights and shares read from the zone, and the guarded shift that writes them."""
