"""The LLM annotator: :mod:`.config` (settings, prices, annotation key), :mod:`.client`
(the HTTP transport: throttle, retries, call records), :mod:`.throttle`, :mod:`.records`
and :mod:`.annotator` (the request, validation and re-ask loop).

Nothing is imported here, so reading a run's settings does not load the ``openai`` client.
"""
