"""Networks and densities: dense and conv encoders/decoders, pixel likelihoods, flow bijectors, the mixture posterior."""
