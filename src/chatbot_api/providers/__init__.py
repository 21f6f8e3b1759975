"""Model providers: the interface every backend implements, the built-ins, and the registry."""
