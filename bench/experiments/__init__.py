"""``python -m bench.experiments``: what a running experiment costs ``POST /predict/{model}``.

Modules: :mod:`bench.experiments.inprocess` times ``ModelService.predict`` in this process
without an experiment, beside a canary and beside a full shadow queue;
:mod:`bench.experiments.http` drives ``opsloop serve`` with wrk without and with a canary;
:mod:`bench.experiments.stats` computes the percentiles and the paired differences; and
:mod:`bench.experiments.run` ties them together and reports.
"""
