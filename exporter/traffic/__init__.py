"""Real traffic: requests per platform and route group, from log drains, Prometheus, CloudWatch."""
