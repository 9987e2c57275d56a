"""The upstream side, in Envoy's words: clusters of backends, balancers, health, breakers, retries."""
