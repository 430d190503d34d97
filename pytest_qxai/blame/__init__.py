"""Layer blame: which decoder layers' quantization caused a failing check, and a ``keep=`` spec that fixes it.

``registry`` holds each suite's "re-measure this metric on these items" callable (no torch); ``search`` the
adaptive search and recovery statistics (no torch); ``swap`` the module swap between the two loaded models;
``run`` blames one check end to end; ``report`` renders the results for the terminal and the report files.
"""
