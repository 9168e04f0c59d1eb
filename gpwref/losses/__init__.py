"""One module per loss: the formula in the module docstring, ``value_and_grad(S, pairs, profile, **hyper)``."""
