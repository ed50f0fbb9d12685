"""The OpenAI-compatible server: `protocol` (typed requests, responses, errors), `middleware` (key, body
limits, metrics, 500s), `metrics`, `routes` (reading bodies, waiting, streaming), `app` (the wiring),
`connections` (header timeout), `batcher` (batching across requests) and `engines` (either flavor)."""
