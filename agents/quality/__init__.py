"""The quality agent: drift, evals and answers from the docs."""
