"""Test equipment shared by the tests and the benchmarks: a live web service
(``server``) and the model it serves (``model``)."""
