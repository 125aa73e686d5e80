"""Stage 5, the web service's side of the library (paper section 3.6, Fig. 4):
``inference`` (decode an upload safely, classify it with the exported model,
Grad-CAM), ``server`` (start Django under gunicorn) and ``live`` (the service in
a child process on a free loopback port, ready when it answers: the serving
benchmark and the web tests). Never imports ``studies``.
"""
