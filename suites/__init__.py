"""The standard pytest-qxai check suites (installed as ``pytest_qxai_suites``).

Run them from a checkout with ``pytest suites --quant=gptq4`` or, installed, with
``pytest --pyargs pytest_qxai_suites --quant=gptq4``; ``-k <suite>`` selects one suite.
"""
