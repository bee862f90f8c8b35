"""``python -m bench.gateway``: the latency the LLM gateway adds, against LiteLLM's proxy.

Modules: :mod:`bench.gateway.stub` is the backend (an OpenAI-compatible server that answers
at once), :mod:`bench.gateway.litellm_side` creates LiteLLM's virtual environment and
starts its proxy, :mod:`bench.gateway.servers` starts the stub and ``opsloop serve``,
:mod:`bench.gateway.loadgen` is the load generator (its own process), and
:mod:`bench.gateway.run` ties them together and reports. Kept free of imports so that the
stub and the load generator, which run as ``python -m bench.gateway.<module>``, load
nothing from here.
"""
