"""Stage 5, the web service's side of the library (paper section 3.6, Fig. 4):
``inference`` (decode an upload safely, classify it with the exported model,
Grad-CAM), ``server`` (start Django under gunicorn) and ``devdb`` (a
throw-away PostgreSQL for tests and benchmarks). Never imports ``studies``.
"""
