"""memproc benchmarks: ``make bench`` (quick) and ``make bench FULL=1`` (larger sizes).

Benchmarks print and save figures; they never assert wall-clock times (tests do not either).
"""
