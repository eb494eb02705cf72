"""Importance-sampled log-likelihood, ELBO and inference timing."""
